package driver

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// The driver's own sentinels. Each is a kind of a pkg/errdefs sentinel, as
// every error of package rbd is, so that toStatus needs no table of its
// own.
var (
	// ErrMalformedID means a volume or snapshot ID is not one of ours: no
	// such volume (NotFound), as the CSI spec asks.
	ErrMalformedID error = &kindError{msg: "malformed ID", kind: errdefs.ErrNotFound}
	// ErrUnknownCluster means a clusterID is not in the cluster config.
	ErrUnknownCluster error = &kindError{msg: "unknown cluster", kind: errdefs.ErrInvalidArgument}
)

// kindError is a sentinel with its own message that errors.Is also finds
// as its kind.
type kindError struct {
	msg  string
	kind error
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.kind }

// toStatus converts a domain error to a gRPC status error, once, at the
// edge: the code of the errdefs sentinel it wraps; anything unrecognised
// is Internal.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	code := errdefs.Code(err)
	if code == codes.Unknown {
		code = codes.Internal
	}
	return status.Error(code, err.Error())
}
