package cephkey

import (
	"os"
	"path/filepath"
	"testing"
)

func TestParse(t *testing.T) {
	const key = "AQBxaWRlYWxseXRoaXNpc2Fsb25na2V5PT0AAAAAAAAAAA=="
	for _, tc := range []struct {
		name, text, user, want string
		bad                    bool
	}{
		{name: "bare key", text: key + "\n", user: "admin", want: key},
		{name: "keyring", text: "[client.admin]\n\tkey = " + key + "\n\tcaps mon = \"allow *\"\n", user: "admin", want: key},
		{name: "second section", text: "[client.a]\n key = AAAA\n[client.csi]\n key = " + key + "\n", user: "csi", want: key},
		{name: "other user", text: "[client.a]\n key = " + key + "\n", user: "b", bad: true},
		{name: "empty", text: "", user: "admin", bad: true},
		{name: "not base64", text: "not a key!", user: "admin", bad: true},
	} {
		got, err := Parse(tc.text, tc.user)
		if tc.bad {
			if err == nil {
				t.Errorf("%s: got %q, want an error", tc.name, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: got %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add("[client.admin]\nkey = AQ==\n", "admin")
	f.Add("AQ==", "x")
	f.Fuzz(func(t *testing.T, text, user string) {
		_, _ = Parse(text, user)
	})
}

func TestRead(t *testing.T) {
	dir := t.TempDir()
	keyring := filepath.Join(dir, "keyring")
	os.WriteFile(keyring, []byte("[client.other]\n\tkey = b3RoZXI=\n[client.admin]\n\tkey = QVFBQkNE==\n\tcaps mon = \"allow *\"\n"), 0o600)
	if k, err := Read(keyring, "admin"); err != nil || k != "QVFBQkNE==" {
		t.Errorf("keyring: %q, %v", k, err)
	}
	if _, err := Read(keyring, "nobody"); err == nil {
		t.Error("a user without a key was accepted")
	}
	bare := filepath.Join(dir, "key")
	os.WriteFile(bare, []byte("QVFBQkNE\n"), 0o600)
	if k, err := Read(bare, "admin"); err != nil || k != "QVFBQkNE" {
		t.Errorf("bare key: %q, %v", k, err)
	}
	os.WriteFile(bare, []byte("not a key at all"), 0o600)
	if _, err := Read(bare, "admin"); err == nil {
		t.Error("garbage accepted as a key")
	}
}
