// Command nodeagent is the node agent: `nodeagent serve` runs the daemon
// (package daemon); the other commands are its admin CLI (package cli),
// which talks to the daemon over its socket.
package main

import (
	"io"
	"os"

	"github.com/nodeinfra/nodeinfra/nodeagent/cli"
	"github.com/nodeinfra/nodeinfra/nodeagent/daemon"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := cli.NewRoot()
	root.AddCommand(daemon.Command())
	return cli.Execute(root, args, stdin, stdout, stderr)
}
