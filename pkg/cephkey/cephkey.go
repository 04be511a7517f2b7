// Package cephkey reads a Ceph user's secret key from a keyring file (the
// "key = ..." line of its [client.<user>] section) or from a file that holds
// just the key, as `ceph auth get-key` prints it.
package cephkey

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"os"
	"strings"
)

// Read returns user's base64 key from the keyring or key file at path.
func Read(path, user string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("ceph keyring: %w", err)
	}
	key, err := Parse(string(b), user)
	if err != nil {
		return "", fmt.Errorf("ceph keyring %s: %w", path, err)
	}
	return key, nil
}

// Parse returns user's key from keyring text, or the text itself when it is
// just a key.
func Parse(text, user string) (string, error) {
	s := strings.TrimSpace(text)
	if !strings.Contains(s, "[") {
		if _, err := base64.StdEncoding.DecodeString(s); s == "" || err != nil {
			return "", fmt.Errorf("not a keyring or a key")
		}
		return s, nil
	}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = strings.TrimSpace(line[1 : len(line)-1])
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if ok && section == "client."+user && strings.TrimSpace(k) == "key" {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("no key for client.%s", user)
}
