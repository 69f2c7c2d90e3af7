package fs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/moby/sys/mountinfo"
)

// ErrMountedDifferently: the target of a bind mount is already a mount
// point, but not the one asked for (another source, or the other
// read-only setting).
var ErrMountedDifferently = errors.New("target already mounted differently")

// Bind bind-mounts source at target, nosuid (and nodev for a directory),
// read-only when asked. source is a mounted directory, or a device node (a raw block
// volume); target is created when missing: a directory, or an empty file
// for a device. Both must be absolute.
//
// Bind is idempotent: a target that already shows source (for a
// directory: the same mounted filesystem) with the same read-only setting
// is success; any other mount there is an error wrapping
// ErrMountedDifferently.
func (f *FS) Bind(ctx context.Context, source, target string, readOnly bool) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("bind %s on %s: %w", source, target, err)
	}
	if !filepath.IsAbs(source) || !filepath.IsAbs(target) {
		return fmt.Errorf("bind %q on %q: need absolute paths", source, target)
	}
	source, target = filepath.Clean(source), filepath.Clean(target)
	fi, err := os.Stat(source)
	if err != nil {
		return fmt.Errorf("bind %s on %s: %w", source, target, err)
	}
	cur, err := f.mountAt(target)
	if err != nil {
		return fmt.Errorf("bind %s on %s: %w", source, target, err)
	}
	if cur != nil {
		return f.checkBound(cur, source, target, fi.IsDir(), readOnly)
	}
	if err := makeTarget(target, fi.IsDir()); err != nil {
		return fmt.Errorf("bind %s on %s: %w", source, target, err)
	}
	if err := f.Mounter.Mount(source, target, "", syscall.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", source, target, err)
	}
	flags := uintptr(syscall.MS_BIND | syscall.MS_REMOUNT | syscall.MS_NOSUID)
	if fi.IsDir() {
		// nodev on a device node's bind would deny the device itself.
		flags |= syscall.MS_NODEV
	}
	if readOnly {
		flags |= syscall.MS_RDONLY
	}
	if err := f.Mounter.Mount("", target, "", flags, ""); err != nil {
		uerr := f.Mounter.Unmount(target, umountNoFollow)
		return fmt.Errorf("bind %s on %s: set nosuid (read-only %t): %w", source, target, readOnly, errors.Join(err, uerr))
	}
	f.log().Info("bind-mounted", "source", source, "target", target, "readonly", readOnly)
	return nil
}

// checkBound tells whether the mount cur at target is the bind Bind would
// make.
func (f *FS) checkBound(cur *mountinfo.Info, source, target string, dir, readOnly bool) error {
	if dir {
		src, err := f.mountAt(source)
		if err != nil {
			return fmt.Errorf("bind %s on %s: %w", source, target, err)
		}
		if src == nil || src.Source != cur.Source {
			return fmt.Errorf("bind %s on %s: %s is mounted there: %w", source, target, cur.Source, ErrMountedDifferently)
		}
	}
	if ro := hasOption(cur.Options, "ro"); ro != readOnly {
		return fmt.Errorf("bind %s on %s: mounted there with read-only %t, asked for %t: %w", source, target, ro, readOnly, ErrMountedDifferently)
	}
	return nil
}

func hasOption(opts, opt string) bool {
	for _, o := range strings.Split(opts, ",") {
		if o == opt {
			return true
		}
	}
	return false
}

// makeTarget creates a missing bind target: a directory, or an empty file.
// An existing target is used as it is, unless it is a symbolic link.
func makeTarget(target string, dir bool) error {
	fi, err := os.Lstat(target)
	switch {
	case err == nil && fi.Mode()&os.ModeSymlink != 0:
		return fmt.Errorf("%s is a symbolic link; not followed", target)
	case err == nil:
		return nil
	case !errors.Is(err, os.ErrNotExist):
		return err
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		return err
	}
	if dir {
		return os.Mkdir(target, 0o750)
	}
	fd, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY|syscall.O_NOFOLLOW, 0o640)
	if err != nil {
		return err
	}
	return fd.Close()
}

// Unbind unmounts target and removes it (the directory or file Bind made,
// or the CO made). A missing target is success.
func (f *FS) Unbind(ctx context.Context, target string) error {
	if err := f.Unmount(ctx, target); err != nil {
		return err
	}
	if err := os.Remove(filepath.Clean(target)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", target, err)
	}
	return nil
}

// IsMountPoint reports whether something is mounted at target.
func (f *FS) IsMountPoint(target string) (bool, error) {
	e, err := f.mountAt(target)
	return e != nil, err
}
