package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// A setting is one value for one of a group's kernel files.
type setting struct {
	file  string
	value string
	// restore turns the file's content into the value that writes it
	// back (nil: the content, trimmed). It also tells whether value
	// changes anything: a setting whose restore equals it is skipped.
	restore func(content string) string
}

// writeFunc writes one kernel file. Tests swap it for one that fails.
type writeFunc func(file, value string) error

// apply writes settings in their order, all or nothing. It reads every
// file first (an error there writes nothing); when the kernel refuses a
// value, it writes the old values of the files already written back, in
// reverse order (each intermediate state was valid on the way, so it is
// on the way back: memory.limit_in_bytes never exceeds memsw), and
// returns the refusal.
func apply(settings []setting, write writeFunc) error {
	type step struct {
		setting
		old     string
		existed bool
	}
	steps := make([]step, 0, len(settings))
	for _, s := range settings {
		b, err := readKernelFile(s.file)
		if errors.Is(err, fs.ErrNotExist) {
			steps = append(steps, step{setting: s})
			continue
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", s.file, classify(err))
		}
		old := strings.TrimSpace(string(b))
		if s.restore != nil {
			old = s.restore(string(b))
		}
		if old != s.value {
			steps = append(steps, step{setting: s, old: old, existed: true})
		}
	}
	for i, st := range steps {
		err := write(st.file, st.value)
		if err == nil {
			continue
		}
		err = refused(st.file, st.value, err)
		var undo []error
		for j := i - 1; j >= 0; j-- {
			prev := steps[j]
			if !prev.existed {
				// A test tree's file, made by the write.
				_ = os.Remove(prev.file)
				continue
			}
			if uerr := write(prev.file, prev.old); uerr != nil {
				undo = append(undo, fmt.Errorf("put back %q in %s: %w", prev.old, prev.file, uerr))
			}
		}
		if len(undo) > 0 {
			return fmt.Errorf("%w (and the rollback failed: %w)", err, errors.Join(undo...))
		}
		return err
	}
	return nil
}

// refused describes the kernel's refusal of value in file, wrapping the
// errno and the sentinel that fits it.
func refused(file, value string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	var kind error
	switch {
	case errors.Is(err, syscall.EINVAL), errors.Is(err, syscall.ERANGE), errors.Is(err, syscall.EOVERFLOW), errors.Is(err, syscall.ENODEV):
		kind = errdefs.ErrInvalidArgument
	case errors.Is(err, syscall.EBUSY), errors.Is(err, syscall.ENOSPC):
		kind = errdefs.ErrFailedPrecondition
	case errors.Is(err, fs.ErrNotExist):
		kind = errdefs.ErrNotFound
	}
	if kind == nil {
		return fmt.Errorf("the kernel refused %q in %s: %w", value, file, err)
	}
	return fmt.Errorf("the kernel refused %q in %s: %w: %w", value, file, err, kind)
}

// classify wraps the sentinel that fits a kernel error.
func classify(err error) error {
	switch {
	case errors.Is(err, syscall.ESRCH), errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENODEV):
		return fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
	}
	return err
}

// unavailable is what a host lacks, as an error.
func unavailable(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, errdefs.ErrFailedPrecondition)...)
}

// exists reports whether file exists.
func exists(file string) bool {
	_, err := os.Stat(file)
	return err == nil
}

// checkDevices reports a device of io the host lacks, or a partition (the
// kernel throttles whole disks only), wrapping errdefs.ErrInvalidArgument.
// sysBlock is sysfs' /sys/dev/block.
func checkDevices(sysBlock string, io []DeviceIO) error {
	for _, d := range io {
		dir := filepath.Join(sysBlock, fmt.Sprintf("%d:%d", d.Major, d.Minor))
		if _, err := os.Stat(dir); err != nil {
			return fmt.Errorf("io device %d:%d: unknown device (%v): %w", d.Major, d.Minor, err, errdefs.ErrInvalidArgument)
		}
		if exists(filepath.Join(dir, "partition")) {
			return fmt.Errorf("io device %d:%d: a partition; throttle its disk: %w", d.Major, d.Minor, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// deviceLine is the line of a per-device file (MAJ:MIN first) for d, or
// "".
func deviceLine(content string, d DeviceIO) string {
	prefix := fmt.Sprintf("%d:%d ", d.Major, d.Minor)
	for _, l := range strings.Split(content, "\n") {
		if strings.HasPrefix(l, prefix) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

// defaultWeightOf reads a weight file's default weight: "N" (v1) or the
// line "default N" (v2, where device lines follow).
func defaultWeightOf(content string) string {
	for _, l := range strings.Split(strings.TrimSpace(content), "\n") {
		if w, ok := strings.CutPrefix(l, "default "); ok {
			return strings.TrimSpace(w)
		}
		if _, err := strconv.ParseUint(l, 10, 64); err == nil {
			return l
		}
	}
	return ""
}

// cpuShares is CPUWeight as v1 cpu.shares: 100 (v2's default) is v1's
// default 1024; the kernel's least is 2.
func cpuShares(w uint64) uint64 { return max(w*1024/defaultWeight, 2) }

// Weights of the block IO schedulers, converted from IOWeight as systemd
// does: BFQ (blkio.bfq.weight, io.bfq.weight: 1-1000, default 100) keeps a
// weight up to the default and compresses those above it; CFQ (v1
// blkio.weight: 10-1000, default 500) scales about the defaults and clamps.
func bfqWeight(w uint64) uint64 {
	if w <= defaultWeight {
		return w
	}
	return defaultWeight + (w-defaultWeight)*(1000-defaultWeight)/(maxWeight-defaultWeight)
}

func cfqWeight(w uint64) uint64 { return min(max(w*500/defaultWeight, 10), 1000) }

// orMax is a v2 limit: n, or "max" for 0 (none).
func orMax(n uint64) string {
	if n == 0 {
		return "max"
	}
	return strconv.FormatUint(n, 10)
}
