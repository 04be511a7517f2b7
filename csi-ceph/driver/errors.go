package driver

import (
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nodeinfra/nodeinfra/csi-ceph/rbd"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// The driver's own checks use the suite's sentinels.
var (
	errInvalid      = errdefs.ErrInvalidArgument
	errUnavailable  = errdefs.ErrUnavailable
	errPrecondition = errdefs.ErrFailedPrecondition
	errAborted      = errdefs.ErrAborted
	errOutOfRange   = errdefs.ErrOutOfRange
	errNotFound     = errdefs.ErrNotFound
)

// ownCodes maps the errors of this driver's packages that errdefs does not
// know.
var ownCodes = []struct {
	err  error
	code codes.Code
}{
	{ErrMalformedID, codes.NotFound},
	{ErrUnknownCluster, codes.InvalidArgument},
	{rbd.ErrInvalid, codes.InvalidArgument},
	{rbd.ErrAlreadyExists, codes.AlreadyExists},
	{rbd.ErrNotFound, codes.NotFound},
	{rbd.ErrBusy, codes.FailedPrecondition},
}

// toStatus converts a domain error to a gRPC status error, once, at the
// edge; anything unrecognised is Internal.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	for _, c := range ownCodes {
		if errors.Is(err, c.err) {
			return status.Error(c.code, err.Error())
		}
	}
	if code := errdefs.Code(err); code != codes.Unknown {
		return status.Error(code, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}
