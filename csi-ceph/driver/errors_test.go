package driver

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

func TestToStatus(t *testing.T) {
	if toStatus(nil) != nil {
		t.Fatal("toStatus(nil) is not nil")
	}
	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{fmt.Errorf("ID %q: unknown version: %w", "x", ErrMalformedID), codes.NotFound},
		{fmt.Errorf("clusterID %q is not in the cluster config: %w", "x", ErrUnknownCluster), codes.InvalidArgument},
		{fmt.Errorf("image feature: %w", errdefs.ErrInvalidArgument), codes.InvalidArgument},
		{fmt.Errorf("volume exists: %w", errdefs.ErrAlreadyExists), codes.AlreadyExists},
		{fmt.Errorf("pool: %w", errdefs.ErrNotFound), codes.NotFound},
		{fmt.Errorf("image has snapshots: %w", errdefs.ErrFailedPrecondition), codes.FailedPrecondition},
		{fmt.Errorf("connect: %w", errdefs.ErrUnavailable), codes.Unavailable},
		{fmt.Errorf("busy: %w", errdefs.ErrAborted), codes.Aborted},
		{fmt.Errorf("too big: %w", errdefs.ErrOutOfRange), codes.OutOfRange},
		{fmt.Errorf("wait: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{errors.New("librbd: something odd"), codes.Internal},
	} {
		got := toStatus(tc.err)
		if s, _ := status.FromError(got); s.Code() != tc.code || s.Message() != tc.err.Error() {
			t.Errorf("toStatus(%v) = %v, %q; want %v with the same message", tc.err, s.Code(), s.Message(), tc.code)
		}
	}
	// The driver's sentinels keep their own messages.
	if ErrMalformedID.Error() != "malformed ID" || ErrUnknownCluster.Error() != "unknown cluster" {
		t.Errorf("messages %q, %q", ErrMalformedID, ErrUnknownCluster)
	}
}
