package driver

import (
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// conditionOf decodes the VolumeCondition (field 2) of a
// NodeGetVolumeStatsResponse, as a kubelet on CSI 1.12 reads it.
func conditionOf(t *testing.T, resp *csi.NodeGetVolumeStatsResponse) (abnormal bool, msg string) {
	t.Helper()
	b := resp.ProtoReflect().GetUnknown()
	found := false
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			t.Fatalf("bad unknown fields %x", resp.ProtoReflect().GetUnknown())
		}
		b = b[n:]
		if num != 2 || typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			b = b[n:]
			continue
		}
		cond, n := protowire.ConsumeBytes(b)
		b = b[n:]
		found = true
		for len(cond) > 0 {
			num, typ, n := protowire.ConsumeTag(cond)
			cond = cond[n:]
			switch {
			case num == 1 && typ == protowire.VarintType:
				v, n := protowire.ConsumeVarint(cond)
				abnormal, cond = v != 0, cond[n:]
			case num == 2 && typ == protowire.BytesType:
				s, n := protowire.ConsumeString(cond)
				msg, cond = s, cond[n:]
			default:
				cond = cond[protowire.ConsumeFieldValue(num, typ, cond):]
			}
		}
	}
	if !found {
		t.Fatal("no volume condition in the response")
	}
	return abnormal, msg
}

// The condition survives marshalling (it is what goes on the wire).
func TestVolumeConditionOnTheWire(t *testing.T) {
	for _, tc := range []struct {
		abnormal bool
		msg      string
	}{{false, ""}, {true, "rbd-fuse of csi-vol-x does not answer"}} {
		resp := &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: 1}}}
		setVolumeCondition(resp, tc.abnormal, tc.msg)
		b, err := proto.Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		var got csi.NodeGetVolumeStatsResponse
		if err := proto.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		if a, m := conditionOf(t, &got); a != tc.abnormal || m != tc.msg || len(got.GetUsage()) != 1 {
			t.Errorf("condition %v %q, want %v %q", a, m, tc.abnormal, tc.msg)
		}
	}
}
