package main

import (
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"

	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/nodeinfra/nodeinfra/e2e/fabric"
)

// buildFabric adds the VPCs and their ENIs to the node (section 1).
func (d *demo) buildFabric() error {
	d.gw = netip.MustParsePrefix("10.10.0.1/24")
	d.vpcs = map[string]*fabric.VPC{}
	for _, name := range []string{"vpc-blue", "vpc-green"} {
		if err := d.interrupted(); err != nil {
			return err
		}
		v, err := d.f.AddVPC(name, d.gw)
		if err != nil {
			return err
		}
		d.vpcs[name] = v
	}
	fmt.Fprintf(d.out, "  node       netns %s, management address %s on mgmt0\n", fabric.Name(d.f.Node), fabric.NodeAddr)
	d.specs = []eniSpec{
		{"vpc-blue", "eni-blue1", "10.10.0.11"}, {"vpc-blue", "eni-blue2", "10.10.0.12"},
		{"vpc-green", "eni-green1", "10.10.0.11"}, {"vpc-green", "eni-green2", "10.10.0.13"},
	}
	d.enis = make([]fabric.ENI, len(d.specs))
	for i, s := range d.specs {
		if err := d.interrupted(); err != nil {
			return err
		}
		var err error
		d.enis[i], err = d.f.AddENI(d.vpcs[s.vpc], s.link)
		if err != nil {
			return err
		}
	}
	for _, name := range []string{"vpc-blue", "vpc-green"} {
		v := d.vpcs[name]
		fmt.Fprintf(d.out, "  %-10s netns %s, bridge br0 with gateway %s\n", name, fabric.Name(v.NS), v.Gateway)
		for i, s := range d.specs {
			if s.vpc == name {
				fmt.Fprintf(d.out, "    ENI %-10s mac %s, in the node namespace (for %s)\n", d.enis[i].HostName, d.enis[i].MAC, s.ip)
			}
		}
	}
	return nil
}

// register registers the ENIs with the agent and assigns the pods (section 3).
func (d *demo) register() error {
	d.section("3. Register the ENIs and assign pods to them")
	for i, s := range d.specs {
		_, err := d.cli(false, "eni", "add", d.enis[i].MAC, "--vpc", s.vpc, "--ip", s.ip+"/24",
			"--gateway", d.gw.Addr().String(), "--mtu", "1400")
		if err != nil {
			return err
		}
	}
	d.pods = []*pod{
		{vpc: d.vpcs["vpc-blue"], eni: d.enis[0], ip: "10.10.0.11", assign: "mac", namespace: "blue", name: "web"},
		{vpc: d.vpcs["vpc-blue"], eni: d.enis[1], ip: "10.10.0.12", assign: "vpc", namespace: "blue", name: "db"},
		{vpc: d.vpcs["vpc-green"], eni: d.enis[2], ip: "10.10.0.11", assign: "mac", namespace: "green", name: "web"},
		{vpc: d.vpcs["vpc-green"], eni: d.enis[3], ip: "10.10.0.13", assign: "vpc", namespace: "green", name: "cache"},
	}
	for _, p := range d.pods {
		target := []string{"--mac", p.eni.MAC}
		if p.assign == "vpc" {
			target = []string{"--vpc", p.vpc.Name}
		}
		if _, err := d.cli(true, append([]string{"eni", "assign", p.ref()}, target...)...); err != nil {
			return err
		}
	}
	return nil
}

// addPods creates the pods' sandbox namespaces and runs CNI ADD for each,
// as containerd would (section 4).
func (d *demo) addPods() error {
	d.section("4. Create 4 pod sandboxes and run CNI ADD through libcni (cniVersion 1.1.0)")
	var err error
	d.rt, err = fabric.NewRuntime(d.f.Node, d.bin, filepath.Join(d.tmp, "cni-cache"), fabric.Conflist("1.1.0", d.agent.Socket))
	if err != nil {
		return err
	}
	// In order: each VPC's --mac pod before its --vpc pod, so the --vpc pod
	// gets the VPC's other ENI.
	for _, p := range d.pods {
		if err := d.interrupted(); err != nil {
			return err
		}
		fp, err := d.f.NewPod(p.namespace, p.name)
		if err != nil {
			return err
		}
		p.Pod = fp
		raw, err := d.rt.Add(d.ctx, p.Pod)
		if err != nil {
			return fmt.Errorf("ADD %s: %w", p.ref(), err)
		}
		res, err := types100.GetResult(raw)
		if err != nil {
			return fmt.Errorf("ADD %s: result: %w", p.ref(), err)
		}
		var mac, addr, via string
		if len(res.Interfaces) > 0 {
			mac = res.Interfaces[0].Mac
		}
		if len(res.IPs) > 0 {
			addr, via = res.IPs[0].Address.String(), res.IPs[0].Gateway.String()
		}
		fmt.Fprintf(d.out, "  ADD %-11s -> netns %s: eth0 %s %s via %s\n", p.ref(), fabric.Name(p.NS), mac, addr, via)
		if mac != p.eni.MAC {
			return fmt.Errorf("ADD %s: got ENI %s, want %s (%s)", p.ref(), mac, p.eni.MAC, p.eni.HostName)
		}
	}
	return nil
}

// inspect shows what the agent knows and what the pods see (sections 5
// and 6).
func (d *demo) inspect() error {
	d.section("5. What the agent knows")
	if _, err := d.cli(true, "eni", "list"); err != nil {
		return err
	}
	if _, err := d.cli(true, "status"); err != nil {
		return err
	}

	d.section("6. Inside the pods")
	for _, p := range d.pods {
		if err := d.interrupted(); err != nil {
			return err
		}
		args := []string{"netns", "exec", fabric.Name(p.NS), "ip", "-br", "addr"}
		fmt.Fprintf(d.out, "  %s %s\n", d.dim("# "+p.ref()+" ("+p.vpc.Name+")"), d.dim("$ ip "+strings.Join(args, " ")))
		out, err := exec.CommandContext(d.ctx, "ip", args...).CombinedOutput()
		d.indent(string(out))
		if err != nil {
			return fmt.Errorf("ip -br addr in %s: %w", p.ref(), err)
		}
	}
	return nil
}
