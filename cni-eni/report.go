package main

import (
	"context"
	"errors"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/pkg/agentclient"
)

// reportTimeout bounds the report: it is the plugin's last step and must
// not hold the runtime up.
const reportTimeout = time.Second

// reported wraps a command so that, whatever its outcome, the agent
// learns of it (ReportCNI) for its metrics: the command, the CNI error
// code (0 for success) and the plugin's time. A report that cannot be
// made changes nothing of the command's answer.
func reported(command string, f func(*skel.CmdArgs) error) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) error {
		start := time.Now()
		err := f(args)
		report(args, command, errorCode(err), time.Since(start))
		return err
	}
}

// errorCode is the CNI error code an error answers with (skel turns other
// errors into 999, internal).
func errorCode(err error) uint32 {
	if err == nil {
		return 0
	}
	var te *types.Error
	if errors.As(err, &te) {
		return uint32(te.Code)
	}
	return uint32(types.ErrInternal)
}

func report(args *skel.CmdArgs, command string, code uint32, d time.Duration) {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return // no socket to report to
	}
	cl, err := agentclient.Dial(conf.AgentSocket)
	if err != nil {
		return
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), min(reportTimeout, conf.timeout))
	defer cancel()
	_, _ = cl.ReportCNI(ctx, &apiv1.ReportCNIRequest{Command: command, Code: code, DurationNano: int64(d)})
}
