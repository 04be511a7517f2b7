package qemu

import "testing"

func TestDiskOfDevice(t *testing.T) {
	for qdev, want := range map[string]string{
		"blk-data": "data",
		"/machine/peripheral/blk-db1/virtio-backend":        "db1",
		"/machine/peripheral/blk-x":                         "x",
		"/machine/peripheral-anon/device[0]/virtio-backend": "",
		"ide0-hd0": "",
		"blk-":     "",
	} {
		got, ok := diskOfDevice(qdev)
		if got != want || ok != (want != "") {
			t.Errorf("diskOfDevice(%q) = %q, %v; want %q", qdev, got, ok, want)
		}
	}
}
