package fs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/blockvol/blockvol/hostexec"
)

// Freeze suspends writes to the filesystem mounted at mountpoint and
// makes it consistent on its device (`fsfreeze --freeze`), so that a copy
// of the device taken now is a clean, crash-consistent image. The caller
// must call Thaw on every path, errors and deadlines included.
func (f *FS) Freeze(ctx context.Context, mountpoint string) error {
	if _, err := f.Run.Run(ctx, "fsfreeze", "--freeze", mountpoint); err != nil {
		return fmt.Errorf("freeze the filesystem at %s: %w", mountpoint, err)
	}
	f.log().Info("filesystem frozen", "mountpoint", mountpoint)
	return nil
}

// thawTimeout bounds a Thaw whose caller's context has ended already: a
// frozen filesystem blocks every writer, so it is thawed regardless.
const thawTimeout = 30 * time.Second

// Thaw resumes writes to the filesystem at mountpoint (`fsfreeze
// --unfreeze`). It runs even when ctx has ended, under its own short
// deadline: a filesystem is never left frozen because a caller gave up.
func (f *FS) Thaw(ctx context.Context, mountpoint string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), thawTimeout)
	defer cancel()
	if _, err := f.Run.Run(ctx, "fsfreeze", "--unfreeze", mountpoint); err != nil {
		return fmt.Errorf("thaw the filesystem at %s: %w", mountpoint, err)
	}
	f.log().Info("filesystem thawed", "mountpoint", mountpoint)
	return nil
}

// Grow grows the filesystem mounted at mountpoint (from dev) to fill its
// device, online: resize2fs for ext4, xfs_growfs for xfs. A filesystem
// that fills its device already is left as it is. The kernel lets only a
// process with CAP_SYS_RESOURCE grow ext4 online; without it the error
// says so (GrowUnmounted needs no such right).
func (f *FS) Grow(ctx context.Context, dev, mountpoint string) error {
	e, err := f.mountAt(mountpoint)
	if err != nil {
		return fmt.Errorf("grow the filesystem at %s: %w", mountpoint, err)
	}
	if e == nil || !SameDevice(e.Source, dev) {
		return fmt.Errorf("grow the filesystem at %s: device %s is not mounted there", mountpoint, dev)
	}
	switch e.FSType {
	case "ext4":
		_, err = f.Run.Run(ctx, "resize2fs", dev)
		var ee *hostexec.ExitError
		if errors.As(err, &ee) && strings.Contains(ee.Stderr, "Permission denied to resize") {
			return fmt.Errorf("grow the ext4 filesystem at %s online: the kernel allows it only to a process with CAP_SYS_RESOURCE, which blockvol lacks here; it grows when the volume is next mounted: %w", mountpoint, err)
		}
	case "xfs":
		_, err = f.Run.Run(ctx, "xfs_growfs", mountpoint)
	default:
		return fmt.Errorf("grow the filesystem at %s: blockvol grows ext4 and xfs, not %s", mountpoint, e.FSType)
	}
	if err != nil {
		return fmt.Errorf("grow the %s filesystem at %s: %w", e.FSType, mountpoint, err)
	}
	f.log().Info("filesystem grown to its device", "device", dev, "mountpoint", mountpoint, "fstype", e.FSType)
	return nil
}

// GrowUnmounted grows the unmounted filesystem on dev to fill dev when it
// can without a mount (ext4: a forced `e2fsck -f -p`, which resize2fs
// demands, then resize2fs) and reports whether it did; xfs grows only
// mounted (Grow).
func (f *FS) GrowUnmounted(ctx context.Context, dev string) (bool, error) {
	sig, err := f.probe(ctx, dev)
	if err != nil {
		return false, err
	}
	if sig.Type != "ext4" {
		return false, nil
	}
	_, err = f.Run.Run(ctx, "e2fsck", "-f", "-p", dev)
	if code := hostexec.ExitCode(err); err != nil && code != 1 {
		return false, fmt.Errorf("check the ext4 filesystem on %s before growing it (run `e2fsck -f %s` by hand): %w", dev, dev, err)
	}
	if _, err := f.Run.Run(ctx, "resize2fs", dev); err != nil {
		return false, fmt.Errorf("grow the ext4 filesystem on %s: %w", dev, err)
	}
	f.log().Info("filesystem grown to its device", "device", dev, "fstype", "ext4")
	return true, nil
}

// NewUUID gives the unmounted filesystem on dev, a copy of another one, a
// new random UUID, so that both can be mounted on one host (xfs refuses a
// second filesystem with the same UUID). An xfs copy taken from a frozen
// filesystem has a log to replay first, which xfs_db's uuid command will not do (and
// it exits 0 all the same): it is mounted once with nouuid at scratch, a
// directory of the caller's, and unmounted. The UUID read afterwards must
// differ from the one before.
func (f *FS) NewUUID(ctx context.Context, dev, scratch string) error {
	sig, err := f.probe(ctx, dev)
	if err != nil {
		return err
	}
	switch sig.Type {
	case "ext4":
		if err := f.fsckExt4(ctx, dev); err != nil {
			return err
		}
		if _, err := f.Run.Run(ctx, "tune2fs", "-U", "random", dev); err != nil {
			return fmt.Errorf("give the ext4 filesystem on %s a new UUID: %w", dev, err)
		}
	case "xfs":
		if err := f.replayXFSLog(ctx, dev, scratch); err != nil {
			return err
		}
		// What `xfs_admin -U generate` runs, without its shell script (the
		// managed plugin's root filesystem has no shell).
		if _, err := f.Run.Run(ctx, "xfs_db", "-x", "-p", "xfs_admin", "-c", "uuid generate", dev); err != nil {
			return fmt.Errorf("give the xfs filesystem on %s a new UUID: %w", dev, err)
		}
	default:
		return fmt.Errorf("give the filesystem on %s a new UUID: blockvol handles ext4 and xfs, not %s", dev, sig.describe())
	}
	after, err := f.probe(ctx, dev)
	if err != nil {
		return err
	}
	if after.UUID == "" || after.UUID == sig.UUID {
		return fmt.Errorf("give the %s filesystem on %s a new UUID: it still has UUID %q", sig.Type, dev, sig.UUID)
	}
	f.log().Info("filesystem given a new UUID", "device", dev, "fstype", sig.Type, "uuid", after.UUID)
	return nil
}

// replayXFSLog mounts dev (nouuid: its twin may be mounted) at scratch and
// unmounts it, so that the kernel replays its log.
func (f *FS) replayXFSLog(ctx context.Context, dev, scratch string) error {
	if err := os.MkdirAll(scratch, 0o700); err != nil {
		return fmt.Errorf("replay the xfs log on %s: %w", dev, err)
	}
	defer os.Remove(scratch)
	if err := f.Mounter.Mount(dev, scratch, "xfs", 0, "nouuid"); err != nil {
		return fmt.Errorf("replay the xfs log on %s (mount with nouuid): %w", dev, err)
	}
	if err := f.Unmount(ctx, scratch); err != nil {
		return fmt.Errorf("replay the xfs log on %s: %w", dev, err)
	}
	return nil
}
