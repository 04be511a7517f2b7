package sandbox

import (
	"os"
	"syscall"
)

// crashAt names a point where the agent kills itself, for the crash-safety
// tests only: NODEAGENT_TEST_CRASH_AT=<step> ("pod network", "qemu",
// "connect", ... as in bootSteps, or one of the attach points) makes the
// agent die with SIGKILL just before that point, as a kill -9 would. It is
// read once at start; production never sets it.
var crashAt = os.Getenv("NODEAGENT_TEST_CRASH_AT")

func crashpoint(name string) {
	if crashAt != "" && crashAt == name {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}
