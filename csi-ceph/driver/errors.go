package driver

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nodeinfra/nodeinfra/csi-ceph/rbd"
)

// Kinds of failure the driver's own checks report; rbd's sentinels and
// these are mapped to gRPC codes once, in toStatus.
var (
	errInvalid      = errors.New("invalid argument")
	errUnavailable  = errors.New("unavailable")
	errPrecondition = errors.New("failed precondition")
	errAborted      = errors.New("aborted")
	errOutOfRange   = errors.New("out of range")
	errNotFound     = errors.New("not found")
)

var codeOf = []struct {
	err  error
	code codes.Code
}{
	{errInvalid, codes.InvalidArgument},
	{ErrMalformedID, codes.NotFound},
	{ErrUnknownCluster, codes.InvalidArgument},
	{rbd.ErrInvalid, codes.InvalidArgument},
	{rbd.ErrAlreadyExists, codes.AlreadyExists},
	{errNotFound, codes.NotFound},
	{rbd.ErrNotFound, codes.NotFound},
	{errUnavailable, codes.Unavailable},
	{errPrecondition, codes.FailedPrecondition},
	{errAborted, codes.Aborted},
	{errOutOfRange, codes.OutOfRange},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
	{context.Canceled, codes.Canceled},
}

// toStatus converts a domain error to a gRPC status error.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	for _, c := range codeOf {
		if errors.Is(err, c.err) {
			return status.Error(c.code, err.Error())
		}
	}
	return status.Error(codes.Internal, err.Error())
}
