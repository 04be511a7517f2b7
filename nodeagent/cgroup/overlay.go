package cgroup

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// With returns r with the fields o sets replaced by o's: the limits in
// force after an update o. A device o lists replaces r's entry for it
// (all four rates 0 removes it). A memory limit without swap ends the
// swap, as Update does.
func (r Resources) With(o Resources) Resources {
	r.CPUs = pick(r.CPUs, o.CPUs)
	r.CPUWeight = pick(r.CPUWeight, o.CPUWeight)
	r.CPUSetCPUs = pick(r.CPUSetCPUs, o.CPUSetCPUs)
	r.CPUSetMems = pick(r.CPUSetMems, o.CPUSetMems)
	r.MemoryBytes = pick(r.MemoryBytes, o.MemoryBytes)
	r.MemoryLowBytes = pick(r.MemoryLowBytes, o.MemoryLowBytes)
	if o.MemoryBytes != nil && o.SwapBytes == nil {
		r.SwapBytes = nil // a memory limit alone means no swap (see SwapBytes)
	}
	r.SwapBytes = pick(r.SwapBytes, o.SwapBytes)
	r.Pids = pick(r.Pids, o.Pids)
	r.IOWeight = pick(r.IOWeight, o.IOWeight)
	if len(o.IO) > 0 {
		io := slices.Clone(r.IO)
		for _, d := range o.IO {
			i := slices.IndexFunc(io, func(x DeviceIO) bool { return x.Major == d.Major && x.Minor == d.Minor })
			none := d == DeviceIO{Major: d.Major, Minor: d.Minor}
			switch {
			case i >= 0 && none:
				io = slices.Delete(io, i, i+1)
			case i >= 0:
				io[i] = d
			case !none:
				io = append(io, d)
			}
		}
		r.IO = io
	}
	return r
}

// pick is a copy of o when set, else of cur.
func pick[T any](cur, o *T) *T {
	if o == nil {
		o = cur
	}
	if o == nil {
		return nil
	}
	v := *o
	return &v
}

// Undo returns the limits that, written back, undo an update o of
// limits r (r = the limits in force before it): r's value of each
// field o sets. A field r never set is left out (nothing to go back to).
func (r Resources) Undo(o Resources) Resources {
	var u Resources
	if o.CPUs != nil {
		u.CPUs = pick(nil, r.CPUs)
	}
	if o.CPUWeight != nil {
		u.CPUWeight = pick(nil, r.CPUWeight)
	}
	if o.CPUSetCPUs != nil {
		u.CPUSetCPUs = pick(nil, r.CPUSetCPUs)
	}
	if o.CPUSetMems != nil {
		u.CPUSetMems = pick(nil, r.CPUSetMems)
	}
	if o.MemoryBytes != nil {
		u.MemoryBytes = pick(nil, r.MemoryBytes)
	}
	if o.MemoryLowBytes != nil {
		u.MemoryLowBytes = pick(nil, r.MemoryLowBytes)
	}
	if o.SwapBytes != nil || o.MemoryBytes != nil {
		u.SwapBytes = pick(nil, r.SwapBytes)
	}
	if o.Pids != nil {
		u.Pids = pick(nil, r.Pids)
	}
	if o.IOWeight != nil {
		u.IOWeight = pick(nil, r.IOWeight)
	}
	for _, d := range o.IO {
		prev := DeviceIO{Major: d.Major, Minor: d.Minor}
		if i := slices.IndexFunc(r.IO, func(x DeviceIO) bool { return x.Major == d.Major && x.Minor == d.Minor }); i >= 0 {
			prev = r.IO[i]
		}
		u.IO = append(u.IO, prev)
	}
	return u
}

// IsZero reports whether r sets no limit.
func (r Resources) IsZero() bool {
	return r.CPUs == nil && r.CPUWeight == nil && r.CPUSetCPUs == nil && r.CPUSetMems == nil && r.MemoryBytes == nil &&
		r.MemoryLowBytes == nil && r.SwapBytes == nil && r.Pids == nil && r.IOWeight == nil && len(r.IO) == 0
}

// ParseDevice finds a host block device's numbers from its path
// (/dev/vda) or "MAJOR:MINOR". A device the host does not have is
// InvalidArgument.
func ParseDevice(dev string) (major, minor int64, err error) {
	if a, b, ok := strings.Cut(dev, ":"); ok && !strings.HasPrefix(dev, "/") {
		ma, err1 := strconv.ParseUint(a, 10, 32)
		mi, err2 := strconv.ParseUint(b, 10, 32)
		if err1 != nil || err2 != nil {
			return 0, 0, fmt.Errorf("device %q: want a path such as /dev/vda or MAJOR:MINOR: %w", dev, errdefs.ErrInvalidArgument)
		}
		major, minor = int64(ma), int64(mi)
	} else {
		if !strings.HasPrefix(dev, "/") {
			return 0, 0, fmt.Errorf("device %q: want a path such as /dev/vda or MAJOR:MINOR: %w", dev, errdefs.ErrInvalidArgument)
		}
		var st unix.Stat_t
		if err := unix.Stat(dev, &st); err != nil {
			return 0, 0, fmt.Errorf("device %q: %v: %w", dev, err, errdefs.ErrInvalidArgument)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFBLK {
			return 0, 0, fmt.Errorf("device %q is not a block device: %w", dev, errdefs.ErrInvalidArgument)
		}
		major, minor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
	}
	if _, err := os.Stat(fmt.Sprintf("/sys/dev/block/%d:%d", major, minor)); err != nil {
		return 0, 0, fmt.Errorf("device %q: no block device %d:%d on this host: %w", dev, major, minor, errdefs.ErrInvalidArgument)
	}
	return major, minor, nil
}
