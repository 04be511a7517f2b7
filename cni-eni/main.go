// Command cni-eni is a CNI plugin that moves the pod's elastic NIC (ENI)
// into the pod's network namespace and configures it there. The node agent
// (nodeagent) tells it which ENI a pod gets.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	ver "github.com/nodeinfra/nodeinfra/pkg/version"
)

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    reported("ADD", cmdAdd),
		Del:    reported("DEL", cmdDel),
		Check:  reported("CHECK", cmdCheck),
		GC:     cmdGC,
		Status: cmdStatus,
	}, version.PluginSupports("1.0.0", "1.1.0"), "cni-eni "+ver.Version+": moves the pod's ENI into its network namespace")
}
