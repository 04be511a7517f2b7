// Command pause is the pod sandbox's first process (the runtime's
// sandbox_image): it holds the pod's namespaces open, reaps the children
// that other containers of a shared PID namespace leave behind when it is
// their PID 1, and exits 0 on SIGINT or SIGTERM. Built static
// (CGO_ENABLED=0) so that its image is this one file.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// version is stamped by the build (-X main.version=3.10).
var version = "dev"

// ready runs once the signal handlers are in place: before that, SIGTERM
// has its default action (the tests wait for it).
var ready = func() {}

// reapAll collects every child that has exited, without blocking, and
// returns how many it collected.
func reapAll() int {
	n := 0
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return n
		}
		n++
	}
}

// run waits on sigs: each SIGCHLD reaps, SIGINT or SIGTERM ends it with
// exit code 0. It returns when sigs closes too (code 1: nothing should
// close it).
func run(sigs <-chan os.Signal, reap func() int) int {
	for sig := range sigs {
		switch sig {
		case syscall.SIGINT, syscall.SIGTERM:
			return 0
		case syscall.SIGCHLD:
			reap()
		}
	}
	return 1
}

func main() {
	if len(os.Args) == 2 && (os.Args[1] == "-v" || os.Args[1] == "--version") {
		fmt.Println("pause", version)
		return
	}
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: pause [-v]")
		os.Exit(2)
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "pause: warning: not the first process of its PID namespace")
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	// Children that exited before Notify took effect sent their SIGCHLD
	// to nobody: collect them now.
	reapAll()
	ready()
	os.Exit(run(sigs, reapAll))
}
