package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nodeinfra/nodeinfra/e2e/fabric"
)

// teardown runs CNI DEL for every pod, checks that the ENIs are back in
// the node, stops the agent and deletes the namespaces and the agent's
// cgroup, checking that none is left (section 10).
func (d *demo) teardown() error {
	d.section("10. Teardown: CNI DEL, ENIs back to the node")
	home := true
	for _, p := range d.pods {
		if err := d.interrupted(); err != nil {
			return err
		}
		if err := d.rt.Del(d.ctx, p.Pod, true); err != nil {
			return fmt.Errorf("DEL %s: %w", p.ref(), err)
		}
		st, found, err := fabric.FindLink(d.f.Node, p.eni.MAC)
		if err != nil {
			return err
		}
		where := "NOT back in the node namespace"
		if found {
			where = fmt.Sprintf("back in the node namespace as %s, %s, addresses: %s", st.Name, upDown(st.Up), orNone(st.Addrs))
		}
		fmt.Fprintf(d.out, "  DEL %-11s ENI %s\n", p.ref(), where)
		if !found || st.Name != p.eni.HostName || st.Up || len(st.Addrs) != 0 {
			home = false
		}
	}
	if _, err := d.cli(true, "eni", "list"); err != nil {
		return err
	}
	free, total, err := d.freeENIs()
	if err != nil {
		return err
	}
	where := "each down and unaddressed in the node namespace"
	if !home {
		where = "but NOT all back in the node namespace as they were"
	}
	d.verdict(free == total && total == len(d.specs) && home, fmt.Sprintf("after DEL %d of %d ENIs are free, %s", free, total, where))

	fmt.Fprintln(d.out, "  stopping nodeagent, deleting the namespaces")
	names := []string{fabric.Name(d.f.Node)}
	for _, v := range d.vpcs {
		names = append(names, fabric.Name(v.NS))
	}
	for _, p := range d.pods {
		names = append(names, fabric.Name(p.NS))
	}
	d.agent.Stop()
	cgErr := d.removeCgroupParent()
	d.f.Close()
	var left []string
	for _, n := range names {
		if _, err := os.Stat(filepath.Join("/run/netns", n)); err == nil {
			left = append(left, n)
		}
	}
	if len(left) == 0 {
		d.verdict(true, fmt.Sprintf("nodeagent stopped, all %d namespaces of the demo deleted", len(names)))
	} else {
		d.verdict(false, fmt.Sprintf("namespaces still there: %s", strings.Join(left, " ")))
	}
	if cgErr == nil {
		d.verdict(true, fmt.Sprintf("the agent's cgroup %s removed from every hierarchy", d.cgroupParent))
	} else {
		d.verdict(false, cgErr.Error())
	}
	return nil
}
