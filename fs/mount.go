package fs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/blockvol/blockvol/internal/sentinel"
	"golang.org/x/sys/unix"
)

// Mounter is the mount(2)/umount2(2) pair; the real one is SyscallMounter.
type Mounter interface {
	Mount(source, target, fstype string, flags uintptr, data string) error
	Unmount(target string, flags int) error
	// ReadOnly reports whether the kernel has block device dev read-only
	// (the BLKROGET ioctl, what `blockdev --getro` prints).
	ReadOnly(dev string) (bool, error)
	// Claimed reports whether something holds block device dev
	// exclusively: a filesystem mounted from it in any mount namespace, a
	// device-mapper map over it, a mkfs or e2fsck running on it. A device
	// that is gone is not claimed.
	Claimed(dev string) (bool, error)
}

// SyscallMounter calls the kernel directly. It uses the standard syscall
// package, which has every call and flag this package needs (the two
// missing constants are defined in options.go).
type SyscallMounter struct{}

// Mount implements Mounter with mount(2).
func (SyscallMounter) Mount(source, target, fstype string, flags uintptr, data string) error {
	return syscall.Mount(source, target, fstype, flags, data)
}

// Unmount implements Mounter with umount2(2).
func (SyscallMounter) Unmount(target string, flags int) error {
	return syscall.Unmount(target, flags)
}

// ReadOnly implements Mounter with the BLKROGET ioctl.
func (SyscallMounter) ReadOnly(dev string) (bool, error) {
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, err
	}
	defer f.Close()
	ro, err := unix.IoctlGetInt(int(f.Fd()), unix.BLKROGET)
	if err != nil {
		return false, fmt.Errorf("BLKROGET: %w", err)
	}
	return ro != 0, nil
}

// Claimed implements Mounter: an exclusive open (O_EXCL on a block device,
// what mount(2), mkfs and e2fsck take) fails with EBUSY while another holds
// the device.
func (SyscallMounter) Claimed(dev string) (bool, error) {
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	switch {
	case err == nil:
		return false, f.Close()
	case errors.Is(err, syscall.EBUSY):
		return true, nil
	case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ENXIO), errors.Is(err, syscall.ENODEV):
		return false, nil
	}
	return false, err
}

// InUse reports whether block device dev is held by another: mounted in
// some mount namespace (this one's mountinfo may not show it), or claimed
// by device-mapper. Its filesystem, if any, is then live.
func (f *FS) InUse(dev string) (bool, error) {
	busy, err := f.Mounter.Claimed(dev)
	if err != nil {
		return false, fmt.Errorf("check whether device %s is in use: %w", dev, err)
	}
	return busy, nil
}

// Mount creates target (mode 0755, parents included) if it is missing and
// mounts dev there as fstype. opts are options from ParseMountOptions; they
// are validated again and nosuid and nodev are always added.
//
// Mount is idempotent: when dev is already the filesystem mounted at
// target, it returns nil without mounting again; when another device is
// mounted there, it fails rather than stack a second mount.
func (f *FS) Mount(ctx context.Context, dev, target, fstype string, opts []string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("mount device %s on %s: %w", dev, target, err)
	}
	if dev == "" || fstype == "" || !filepath.IsAbs(target) {
		return fmt.Errorf("mount device %q on %q as %q: need a device, an absolute target and a filesystem type",
			dev, target, fstype)
	}
	target = filepath.Clean(target)
	flags, data, err := mountArgs(opts)
	if err != nil {
		return fmt.Errorf("mount device %s on %s: %w", dev, target, err)
	}
	cur, err := f.MountedDevice(target)
	if err != nil {
		return fmt.Errorf("mount device %s on %s: %w", dev, target, err)
	}
	if cur != "" {
		if SameDevice(cur, dev) {
			f.log().Info("device already mounted", "device", dev, "target", target)
			return nil
		}
		return fmt.Errorf("mount device %s on %s: %s is already mounted there", dev, target, cur)
	}
	if err := f.makeMountPoint(target); err != nil {
		return fmt.Errorf("mount device %s: %w", dev, err)
	}
	if err := f.Mounter.Mount(dev, target, fstype, flags, data); err != nil {
		return fmt.Errorf("mount device %s on %s (%s, options %q): %w",
			dev, target, fstype, strings.Join(opts, ","), err)
	}
	f.log().Info("mounted", "device", dev, "target", target, "fstype", fstype, "options", strings.Join(opts, ","))
	return nil
}

// makeMountPoint makes target a directory of its own, never following a
// symbolic link there: a symlink at target (which would have the device
// mounted wherever it points, outside the mount directory) is removed and
// replaced by a directory; anything else that is not a directory is
// refused.
func (f *FS) makeMountPoint(target string) error {
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return fmt.Errorf("create mount point: %w", err)
	}
	fi, err := os.Lstat(target)
	switch {
	case err == nil && fi.Mode()&os.ModeSymlink != 0:
		f.log().Warn("replacing a symbolic link at the mount point by a directory; it is never followed", "target", target)
		if err := os.Remove(target); err != nil {
			return fmt.Errorf("remove the symbolic link at mount point %s: %w", target, err)
		}
	case err == nil && fi.IsDir():
		return nil
	case err == nil:
		return fmt.Errorf("mount point %s exists and is not a directory", target)
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("mount point: %w", err)
	}
	// Mkdir, not MkdirAll: a symlink that appeared meanwhile is an error,
	// never followed.
	if err := os.Mkdir(target, 0o755); err != nil {
		return fmt.Errorf("create mount point: %w", err)
	}
	return nil
}

// Unmount unmounts the filesystem at target. A target that is not mounted
// (or does not exist) is success. A filesystem still in use yields an
// error wrapping both sentinel.ErrBusy and syscall.EBUSY. Symbolic links in the
// last component of target are not followed.
func (f *FS) Unmount(ctx context.Context, target string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("unmount %s: %w", target, err)
	}
	target = filepath.Clean(target)
	err := f.Mounter.Unmount(target, umountNoFollow)
	switch {
	case err == nil:
		f.log().Info("unmounted", "target", target)
		return nil
	case errors.Is(err, syscall.EINVAL), errors.Is(err, syscall.ENOENT):
		// EINVAL: target is not a mount point; ENOENT: it does not exist.
		return nil
	case errors.Is(err, syscall.EBUSY):
		return fmt.Errorf("unmount %s: %w: %w", target, sentinel.ErrBusy, err)
	}
	return fmt.Errorf("unmount %s: %w", target, err)
}

// SameDevice reports whether two device paths name the same device, after
// resolving symbolic links (/dev/disk/by-id/... against /dev/sdb).
func SameDevice(a, b string) bool {
	if a == b {
		return true
	}
	ra, errA := filepath.EvalSymlinks(a)
	rb, errB := filepath.EvalSymlinks(b)
	return errA == nil && errB == nil && ra == rb
}
