// Package errdefs holds the error kinds shared by the suite's domain code and
// their translation to gRPC status codes. Domain code wraps a sentinel with
// %w; adapters call ToGRPC once, at the edge, and clients call FromGRPC to
// get the sentinel back.
package errdefs

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Sentinels. Wrap them: fmt.Errorf("attach %s: %w", id, ErrNotFound).
var (
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrNotFound           = errors.New("not found")
	ErrAlreadyExists      = errors.New("already exists")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrResourceExhausted  = errors.New("resource exhausted")
	ErrUnavailable        = errors.New("unavailable")
	ErrAborted            = errors.New("aborted")
	ErrOutOfRange         = errors.New("out of range")
)

var table = []struct {
	err  error
	code codes.Code
}{
	{ErrInvalidArgument, codes.InvalidArgument},
	{ErrNotFound, codes.NotFound},
	{ErrAlreadyExists, codes.AlreadyExists},
	{ErrFailedPrecondition, codes.FailedPrecondition},
	{ErrResourceExhausted, codes.ResourceExhausted},
	{ErrUnavailable, codes.Unavailable},
	{ErrAborted, codes.Aborted},
	{ErrOutOfRange, codes.OutOfRange},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
	{context.Canceled, codes.Canceled},
}

// Code returns the gRPC code for err: the code of the first sentinel it
// wraps, the code of a gRPC status it carries, or Unknown.
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	for _, e := range table {
		if errors.Is(err, e.err) {
			return e.code
		}
	}
	if s, ok := status.FromError(err); ok {
		return s.Code()
	}
	return codes.Unknown
}

// ToGRPC converts a domain error into a gRPC status error with the code of
// its sentinel and its full message.
func ToGRPC(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		return err
	}
	return status.Error(Code(err), err.Error())
}

// FromGRPC turns a gRPC status error back into an error that wraps the
// matching sentinel, keeping the server's message.
func FromGRPC(err error) error {
	if err == nil {
		return nil
	}
	s, ok := status.FromError(err)
	if !ok {
		return err
	}
	for _, e := range table {
		if e.code == s.Code() {
			return &remoteError{msg: s.Message(), kind: e.err}
		}
	}
	return &remoteError{msg: s.Message(), kind: err}
}

type remoteError struct {
	msg  string
	kind error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }
