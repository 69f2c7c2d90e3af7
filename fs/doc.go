// Package fs puts a filesystem on a block device and mounts it.
//
// Every host program (blkid, mkfs, e2fsck, wipefs) is run through
// an injected hostexec.Runner and the mount(2)/umount2(2) system calls go
// through an injected Mounter, so that the whole package can be tested with
// scripted fakes and, as root, against real loop devices.
//
// The package is deliberately conservative with data: it formats a device
// only when it is blank, or when it holds one of the filesystems blockvol
// makes (ext4, xfs) and the caller explicitly asked to overwrite it.
// Anything else found on a device (a partition table, an LVM physical
// volume, swap, LUKS, another filesystem) is refused with an error wrapping
// ErrForeignSignature and the device is left untouched.
package fs

import (
	"errors"
	"log/slog"

	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/internal/sentinel"
)

// Sentinel errors; test with errors.Is. An unmount refused because the
// filesystem is in use wraps sentinel.ErrBusy.
var (
	// ErrForeignSignature: the device holds something other than a blank
	// area or an ext4/xfs filesystem, so blockvol will not format it.
	ErrForeignSignature = errors.New("foreign signature on device")
	// ErrInvalidMountOption: a mount option outside the allowlist, or two
	// options that contradict each other. It is also sentinel.ErrInvalid.
	ErrInvalidMountOption error = classError{"invalid mount option", sentinel.ErrInvalid}
	// ErrReadOnly: the device is read-only and cannot be formatted.
	ErrReadOnly = errors.New("device is read-only")
	// ErrNeedsRepair: the device holds an ext4 filesystem with problems
	// that `e2fsck -p` will not repair on its own.
	ErrNeedsRepair = errors.New("filesystem needs repair")
)

// classError is a sentinel of this package that belongs to a class of
// internal/sentinel (errors.Is reports both).
type classError struct {
	msg   string
	class error
}

func (e classError) Error() string { return e.msg }
func (e classError) Unwrap() error { return e.class }

// SupportedFSTypes are the filesystems Prepare can create.
var SupportedFSTypes = []string{"ext4", "xfs"}

// MinSizeBytes is the smallest device on which fstype can be created, or 0
// for a type this package does not create: the one place that knows it.
// mkfs.xfs (xfsprogs 6.1) refuses devices under 300 MiB (its message says
// "300MB"; it means 314572800 bytes; TestRootMinSizeIsMkfsMinimum checks
// it); ext4 has no such rule, 16 MiB is a floor below which a volume is
// of no use (and the journal barely fits).
func MinSizeBytes(fstype string) int64 {
	switch fstype {
	case "xfs":
		return 300 << 20
	case "ext4":
		return 16 << 20
	}
	return 0
}

// Default path of the mount table read by MountedDevice and Mount.
const defaultMountInfoPath = "/proc/self/mountinfo"

// FS prepares and mounts filesystems. The zero value is not usable: Run and
// Mounter must be set. An FS holds no state of its own and is safe for
// concurrent use on different devices and targets; callers serialize work
// on one device.
type FS struct {
	// Run runs host programs (hostexec.OS{} in production).
	Run hostexec.Runner
	// Mounter performs mount(2) and umount2(2) (SyscallMounter{} in production).
	Mounter Mounter
	// Log receives one line per decision that changes a device (format,
	// wipe, fsck, mount, unmount). nil means slog.Default().
	Log *slog.Logger
	// MountInfoPath is the mount table to read; "" means /proc/self/mountinfo.
	MountInfoPath string
}

func (f *FS) log() *slog.Logger {
	if f.Log != nil {
		return f.Log
	}
	return slog.Default()
}

func (f *FS) mountInfoPath() string {
	if f.MountInfoPath != "" {
		return f.MountInfoPath
	}
	return defaultMountInfoPath
}

func supported(fstype string) bool {
	for _, t := range SupportedFSTypes {
		if t == fstype {
			return true
		}
	}
	return false
}
