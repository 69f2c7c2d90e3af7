package fs

import (
	"context"
	"fmt"
	"strings"

	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/internal/sentinel"
)

// Prepare makes sure dev holds a filesystem that can be mounted and returns
// its type, and whether Prepare created it just now.
//
//   - Blank device (blkid -p finds nothing): make fstype; formatted=true.
//   - ext4 or xfs present, overwrite false: use it as it is, even when it is
//     not fstype (the difference is logged); formatted=false. An ext4
//     filesystem is checked with `e2fsck -p` first; problems it cannot
//     repair on its own are an error asking the operator to run e2fsck.
//   - ext4 or xfs present, overwrite true: wipe every signature
//     (wipefs -a) and make fstype; formatted=true.
//   - A device in use (InUse: mounted in another mount namespace, say by
//     containers that outlived a restart of a managed plugin) holding ext4
//     or xfs: its filesystem is live, so it is used as it is, neither
//     checked nor formatted; overwrite, or any other content, is refused
//     (sentinel.ErrBusy).
//   - Anything else (partition table, LVM2_member, swap, crypto_LUKS,
//     another filesystem, conflicting signatures): never formatted, even
//     with overwrite; the error wraps ErrForeignSignature and names what was
//     found.
//
// A read-only device is never formatted (ErrReadOnly). Formatting takes a
// time that does not grow with the device's size: no discard, lazy inode
// table and journal initialisation.
func (f *FS) Prepare(ctx context.Context, dev, fstype string, overwrite bool) (fsType string, formatted bool, err error) {
	if !supported(fstype) {
		return "", false, fmt.Errorf("prepare device %s: unsupported filesystem type %q (supported: %s)",
			dev, fstype, strings.Join(SupportedFSTypes, ", "))
	}
	if err := ctx.Err(); err != nil {
		return "", false, fmt.Errorf("prepare device %s: %w", dev, err)
	}
	sig, err := f.probe(ctx, dev)
	if err != nil {
		return "", false, err
	}
	log := f.log().With("device", dev)
	busy, err := f.InUse(dev)
	if err != nil {
		return "", false, err
	}
	switch {
	case busy && (overwrite || !sig.ours()):
		return "", false, fmt.Errorf("device %s is in use (mounted elsewhere?); blockvol never formats a device in use: %w", dev, sentinel.ErrBusy)
	case busy:
		log.Warn("device is in use elsewhere (mounted in another mount namespace?); its filesystem is live and is used as it is, not checked", "fstype", sig.Type)
		return sig.Type, false, nil
	case sig.blank():
		if err := f.checkWritable(dev); err != nil {
			return "", false, err
		}
		if err := f.format(ctx, dev, fstype); err != nil {
			return "", false, err
		}
		log.Info("formatted blank device", "fstype", fstype)
		return fstype, true, nil

	case !sig.ours():
		return "", false, fmt.Errorf("device %s holds %s; blockvol formats only blank devices and never overwrites it: %w",
			dev, sig.describe(), ErrForeignSignature)

	case overwrite:
		if err := f.checkWritable(dev); err != nil {
			return "", false, err
		}
		if _, err := f.Run.Run(ctx, "wipefs", "-a", dev); err != nil {
			return "", false, fmt.Errorf("wipe signatures on device %s: %w", dev, err)
		}
		log.Warn("wiped existing filesystem on request", "found", sig.Type)
		if err := f.format(ctx, dev, fstype); err != nil {
			return "", false, err
		}
		log.Info("formatted device", "fstype", fstype, "replaced", sig.Type)
		return fstype, true, nil
	}

	if sig.Type != fstype {
		log.Warn("device already holds a different filesystem; using it as it is",
			"found", sig.Type, "requested", fstype)
	}
	if sig.Type == "ext4" {
		if err := f.fsckExt4(ctx, dev); err != nil {
			return "", false, err
		}
	}
	return sig.Type, false, nil
}

// FormatBlank makes fstype on dev, a device the caller has proven to hold
// nothing but zeros (backends.BlankProver), without probing it first: on
// such a device Prepare's probe finds nothing and Prepare formats it. A
// read-only device is still refused (ErrReadOnly).
func (f *FS) FormatBlank(ctx context.Context, dev, fstype string) error {
	if !supported(fstype) {
		return fmt.Errorf("format device %s: unsupported filesystem type %q (supported: %s)",
			dev, fstype, strings.Join(SupportedFSTypes, ", "))
	}
	if err := f.checkWritable(dev); err != nil {
		return err
	}
	if err := f.format(ctx, dev, fstype); err != nil {
		return err
	}
	f.log().Info("formatted blank device", "device", dev, "fstype", fstype)
	return nil
}

// mkfsArgv is the command that creates fstype on dev in a time independent
// of the device's size: no discard of the whole device, and ext4's inode
// tables and journal are initialised lazily (by the kernel, after mount).
func mkfsArgv(fstype, dev string) []string {
	switch fstype {
	case "ext4":
		return []string{"mkfs.ext4", "-q", "-F", "-m", "0", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", dev}
	case "xfs":
		return []string{"mkfs.xfs", "-q", "-K", dev}
	}
	return nil
}

// format creates fstype on dev, which the caller found blank or wiped and
// writable.
func (f *FS) format(ctx context.Context, dev, fstype string) error {
	argv := mkfsArgv(fstype, dev)
	if _, err := f.Run.Run(ctx, argv[0], argv[1:]...); err != nil {
		return fmt.Errorf("make %s filesystem on device %s: %w", fstype, dev, err)
	}
	return nil
}

// checkWritable refuses a device the kernel reports read-only, so that
// the error names the cause rather than surfacing as a write failure deep
// inside mkfs or wipefs.
func (f *FS) checkWritable(dev string) error {
	ro, err := f.Mounter.ReadOnly(dev)
	switch {
	case err != nil:
		return fmt.Errorf("check whether device %s is read-only: %w", dev, err)
	case ro:
		return fmt.Errorf("device %s is read-only; refusing to format it: %w", dev, ErrReadOnly)
	}
	return nil
}

// fsckExt4 runs `e2fsck -p` (automatic, safe repairs only). Exit status 0
// (clean) and 1 (errors corrected) are fine; anything else means the
// filesystem needs a human.
func (f *FS) fsckExt4(ctx context.Context, dev string) error {
	_, err := f.Run.Run(ctx, "e2fsck", "-p", dev)
	switch code := hostexec.ExitCode(err); {
	case err == nil:
		return nil
	case code == 1:
		f.log().Warn("e2fsck corrected errors on the filesystem", "device", dev)
		return nil
	case code > 1:
		return fmt.Errorf("ext4 filesystem on device %s needs repairs e2fsck -p will not make (exit status %d); "+
			"run `e2fsck %s` by hand, then retry: %w: %w", dev, code, dev, ErrNeedsRepair, err)
	default:
		return fmt.Errorf("check ext4 filesystem on device %s: %w", dev, err)
	}
}
