package sandbox

import (
	"encoding/base64"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// Defaults and limits of a Spec.
const (
	DefaultVCPUs     = 1
	DefaultMemoryMiB = 128
	MaxVCPUs         = 64
	MinMemoryMiB     = 64
	MaxMemoryMiB     = 65536

	maxIDLen      = 63
	maxDiskIDLen  = 20
	maxRBDNameLen = 255
)

// WithDefaults returns s with its zero values replaced: 1 vCPU, 128 MiB and
// "disk<index>" for unnamed disks. It does not modify s's disks.
func (s Spec) WithDefaults() Spec {
	if s.VCPUs == 0 {
		s.VCPUs = DefaultVCPUs
	}
	if s.MemoryMiB == 0 {
		s.MemoryMiB = DefaultMemoryMiB
	}
	if s.Disks != nil {
		disks := make([]Disk, len(s.Disks))
		for i, d := range s.Disks {
			if d.ID == "" {
				d.ID = fmt.Sprintf("disk%d", i)
			}
			if d.RBD != nil {
				rbd := *d.RBD
				d.RBD = &rbd
			}
			disks[i] = d
		}
		s.Disks = disks
	}
	return s
}

// Validate checks a spec with its defaults applied (see WithDefaults).
// Every error wraps errdefs.ErrInvalidArgument.
func (s Spec) Validate() error {
	if err := ValidateID(s.ID); err != nil {
		return err
	}
	if s.VCPUs < 1 || s.VCPUs > MaxVCPUs {
		return invalid("sandbox %q: vcpus %d out of range 1-%d", s.ID, s.VCPUs, MaxVCPUs)
	}
	if s.MemoryMiB < MinMemoryMiB || s.MemoryMiB > MaxMemoryMiB {
		return invalid("sandbox %q: memory %d MiB out of range %d-%d", s.ID, s.MemoryMiB, MinMemoryMiB, MaxMemoryMiB)
	}
	if s.NetNS != "" && !isAbsClean(s.NetNS) {
		return invalid("sandbox %q: netns %q must be an absolute, clean path", s.ID, s.NetNS)
	}
	if err := s.Resources.Validate(); err != nil {
		return fmt.Errorf("sandbox %q: %w", s.ID, err)
	}
	if s.CgroupParent != "" {
		if err := validCgroupParent(s.CgroupParent); err != nil {
			return fmt.Errorf("sandbox %q: %w", s.ID, err)
		}
	}
	seen := make(map[string]bool, len(s.Disks))
	for i, d := range s.Disks {
		if err := d.Validate(); err != nil {
			return fmt.Errorf("sandbox %q: disk %d: %w", s.ID, i, err)
		}
		if seen[d.ID] {
			return invalid("sandbox %q: disk ID %q appears twice", s.ID, d.ID)
		}
		seen[d.ID] = true
	}
	return nil
}

// Equal reports whether two specs ask for the same sandbox once their
// defaults are applied: a repeated create must carry an equal spec.
func (s Spec) Equal(o Spec) bool {
	s, o = s.WithDefaults(), o.WithDefaults()
	if s.ID != o.ID || s.VCPUs != o.VCPUs || s.MemoryMiB != o.MemoryMiB || s.NetNS != o.NetNS || len(s.Disks) != len(o.Disks) ||
		s.CgroupParent != o.CgroupParent || !reflect.DeepEqual(s.Resources, o.Resources) {
		return false
	}
	for i := range s.Disks {
		if !s.Disks[i].Equal(o.Disks[i]) {
			return false
		}
	}
	return true
}

// ValidateID checks a sandbox ID: 1-63 characters of [a-z0-9._-] starting
// with a letter or digit, never "..", so that it can name a directory and
// appear on a command line. Errors wrap errdefs.ErrInvalidArgument.
func ValidateID(id string) error {
	if id == "" || len(id) > maxIDLen {
		return invalid("sandbox ID %q must be 1-%d characters", id, maxIDLen)
	}
	if !isLowerAlnum(id[0]) {
		return invalid("sandbox ID %q must start with a letter or digit", id)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !isLowerAlnum(c) && c != '.' && c != '_' && c != '-' {
			return invalid("sandbox ID %q: character %q not in [a-z0-9._-]", id, c)
		}
	}
	if strings.Contains(id, "..") {
		return invalid("sandbox ID %q must not contain \"..\"", id)
	}
	return nil
}

// Validate checks a disk on its own, as a hot-plug gets it: the ID is
// required (see ValidateDiskID) and the source must be valid (see
// ValidateSource). Errors wrap errdefs.ErrInvalidArgument.
func (d Disk) Validate() error {
	if err := ValidateDiskID(d.ID); err != nil {
		return err
	}
	if err := d.ValidateSource(); err != nil {
		return fmt.Errorf("disk %s: %w", d.ID, err)
	}
	if err := d.QoS.Validate(); err != nil {
		return fmt.Errorf("disk %s: %w", d.ID, err)
	}
	return nil
}

// ValidateDiskID checks a disk ID: 1-20 characters of [a-z0-9_-]. Errors
// wrap errdefs.ErrInvalidArgument.
func ValidateDiskID(id string) error {
	if id == "" || len(id) > maxDiskIDLen {
		return invalid("disk ID %q must be 1-%d characters", id, maxDiskIDLen)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !isLowerAlnum(c) && c != '_' && c != '-' {
			return invalid("disk ID %q: character %q not in [a-z0-9_-]", id, c)
		}
	}
	return nil
}

// ValidateSource checks that the disk is exactly one of an absolute, clean
// Path or an RBD image whose pool and image names are 1-255 characters
// without '/', '@' (no snapshots), spaces or control characters. Errors
// wrap errdefs.ErrInvalidArgument.
func (d Disk) ValidateSource() error {
	switch {
	case d.Path != "" && d.RBD != nil:
		return invalid("give a path or an RBD image, not both")
	case d.Path != "":
		if !isAbsClean(d.Path) {
			return invalid("path %q must be an absolute, clean path", d.Path)
		}
	case d.RBD != nil:
		if err := validateRBDName("pool", d.RBD.Pool); err != nil {
			return err
		}
		if err := validateRBDName("image", d.RBD.Image); err != nil {
			return err
		}
		if u := d.RBD.User; u != "" && (strings.HasPrefix(u, "client.") || !validCephUser(u)) {
			return invalid("cephx user %q: letters, digits, '.', '_' and '-', without \"client.\"", u)
		}
		if k := d.RBD.Key; k != "" {
			if _, err := base64.StdEncoding.DecodeString(k); err != nil {
				return invalid("the key of cephx user %q is not base64", d.RBD.User)
			}
			if d.RBD.User == "" {
				return invalid("a key needs its cephx user")
			}
		}
		return nil
	default:
		return invalid("a path or an RBD image is required")
	}
	return nil
}

// Equal reports whether two disks are the same attachment (their QoS
// aside: a setting that changes live).
func (d Disk) Equal(o Disk) bool {
	if d.ID != o.ID || d.Path != o.Path || d.ReadOnly != o.ReadOnly || (d.RBD == nil) != (o.RBD == nil) {
		return false
	}
	if d.RBD == nil {
		return true
	}
	// The key is not kept: a retry after a restart must still match.
	a, b := *d.RBD, *o.RBD
	a.Key, b.Key = "", ""
	return a == b
}

// String names the disk's source: a path or "rbd:POOL/IMAGE".
func (d Disk) String() string {
	if d.RBD != nil {
		return "rbd:" + d.RBD.Pool + "/" + d.RBD.Image
	}
	return d.Path
}

func validateRBDName(what, name string) error {
	if name == "" || len(name) > maxRBDNameLen {
		return invalid("RBD %s %q must be 1-%d characters", what, name, maxRBDNameLen)
	}
	if !utf8.ValidString(name) {
		return invalid("RBD %s %q is not UTF-8", what, name)
	}
	for _, r := range name {
		if r == '/' || r == '@' || unicode.IsSpace(r) || unicode.IsControl(r) {
			return invalid("RBD %s %q must not contain '/', '@', spaces or control characters", what, name)
		}
	}
	return nil
}

func isAbsClean(p string) bool {
	return filepath.IsAbs(p) && filepath.Clean(p) == p && !strings.ContainsRune(p, 0)
}

func isLowerAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
}

func invalid(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, errdefs.ErrInvalidArgument)...)
}

// validCephUser checks a cephx user name (the part after "client.").
func validCephUser(u string) bool {
	if len(u) > 64 {
		return false
	}
	for i := 0; i < len(u); i++ {
		c := u[i]
		if !(isLowerAlnum(c) || c >= 'A' && c <= 'Z' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
