// Command nodeagent is the node agent: `nodeagent serve` runs the daemon;
// the other verbs are its admin CLI, talking to the daemon's socket.
package main

import (
	"fmt"
	"os"
)

const usage = `usage: nodeagent COMMAND [FLAGS]

Daemon:
  serve [--socket PATH] [--state-dir DIR] [--metrics-addr ADDR] [--probe-addr ADDR]
        [--reconcile-interval DUR] [--log-level LEVEL]

Admin (each takes --socket, default $NODEAGENT_SOCKET or /run/nodeagent/nodeagent.sock):
  eni add --mac MAC --vpc VPC --ip ADDR/PREFIX [--ip ...] --gateway IP [--gateway ...] [--mtu N] [--route CIDR ...]
  eni assign --pod NAMESPACE/NAME (--mac MAC | --vpc VPC)
  eni unassign --pod NAMESPACE/NAME
  eni list [--vpc VPC] [-o table|json]
  eni remove --mac MAC
  attachments [-o table|json]
  status [-o table|json]
  probe --pod NAMESPACE/NAME --port N [--http-path PATH] [--timeout DUR]
  sandbox create ID [--vcpus N] [--memory MiB] [--netns PATH] [--disk PATH|rbd:POOL/IMAGE ...] [--wait] [-o table|json]
  sandbox list [-o table|json]
  sandbox get ID [-o table|json]
  sandbox stop ID [--timeout DUR] [-o table|json]
  sandbox delete ID
  sandbox exec ID [--env KEY=VALUE ...] [--dir DIR] -- CMD [ARGS...]
  sandbox attach ID --disk PATH|rbd:POOL/IMAGE [--id DISKID] [--read-only] [-o table|json]
  sandbox detach ID DISKID [-o table|json]
  sandbox events [--current] [-o table|json]
  version
`

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return serve(args[1:])
	case "eni":
		return eniCmd(args[1:])
	case "attachments":
		return attachmentsCmd(args[1:])
	case "status":
		return statusCmd(args[1:])
	case "probe":
		return probeCmd(args[1:])
	case "sandbox":
		return sandboxCmd(args[1:])
	case "version":
		return versionCmd()
	case "-h", "--help", "help":
		fmt.Print(usage)
		return 0
	}
	fmt.Fprintf(os.Stderr, "nodeagent: unknown command %q\n\n%s", args[0], usage)
	return 2
}
