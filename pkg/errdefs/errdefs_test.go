package errdefs

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{fmt.Errorf("attach c1: %w", ErrNotFound), codes.NotFound},
		{fmt.Errorf("register: %w", ErrAlreadyExists), codes.AlreadyExists},
		{fmt.Errorf("pool vpc-a: %w", ErrResourceExhausted), codes.ResourceExhausted},
		{errors.New("plain"), codes.Unknown},
	} {
		g := ToGRPC(tc.err)
		if got := status.Code(g); got != tc.code {
			t.Errorf("ToGRPC(%v) code = %v, want %v", tc.err, got, tc.code)
		}
		back := FromGRPC(g)
		if back.Error() != tc.err.Error() {
			t.Errorf("message lost: %q vs %q", back.Error(), tc.err.Error())
		}
		if tc.code != codes.Unknown {
			for _, e := range table {
				if e.code == tc.code && !errors.Is(back, e.err) {
					t.Errorf("FromGRPC(%v) does not wrap %v", g, e.err)
				}
			}
		}
	}
	if ToGRPC(nil) != nil || FromGRPC(nil) != nil {
		t.Fatal("nil must stay nil")
	}
}
