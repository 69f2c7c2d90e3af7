package iscsitarget

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/internal/sentinel"
)

var _ backends.Expander = (*Backend)(nil)

// Expand implements backends.Expander. tgt reads a backing file's size
// when a LUN is added and never again, takes no size update in place
// (tgtadm --op update refuses it), and refuses to delete a LUN while
// commands are in flight; a command arriving between the LUN's removal
// and its return fails (tgt answers it from LUN 0: "logical unit not
// supported"). So Expand grows a volume only while no initiator is logged
// in to its target: the backing file is lengthened, the record says the
// new size, and LUN 1 is added again over the same file (same SCSI ID
// and serial); a logged-in initiator yields sentinel.ErrInUse naming it.
// ExpandHeld grows a volume this host is using.
func (b *Backend) Expand(ctx context.Context, name string, sizeBytes int64) (backends.Volume, error) {
	return b.expand(ctx, name, sizeBytes, nil)
}

var _ backends.HeldExpander = (*Backend)(nil)

// ExpandHeld implements backends.HeldExpander: the grow of Expand for a
// volume whose target only this host is logged in to, while its
// filesystem here is mounted. The LUN is added again inside hold (this
// host's writes held, so that no command meets the LUN's absence),
// retried while tgt says commands are still in flight; then, out of hold,
// this host's initiator re-reads the LUN's size on the same session (no
// logout, no login) and a multipath map over it is resized.
func (b *Backend) ExpandHeld(ctx context.Context, name string, sizeBytes int64, hold func(step func() error) error) (backends.Volume, error) {
	if hold == nil {
		return backends.Volume{}, opErr("expand", name, errors.New("no way to hold the volume's writes was given"))
	}
	return b.expand(ctx, name, sizeBytes, hold)
}

// expand is Expand (hold nil) and ExpandHeld.
func (b *Backend) expand(ctx context.Context, name string, sizeBytes int64, hold func(step func() error) error) (backends.Volume, error) {
	const op = "expand"
	if err := backends.CheckExpand(name, maxNameLen, sizeBytes); err != nil {
		return backends.Volume{}, opErr(op, name, err)
	}
	var vol backends.Volume
	live := false
	var heldFor time.Duration // the LUN's change, this host's writes held
	err := b.withLock(ctx, op, name, func(ctx context.Context) error {
		f, err := b.load(ctx, name)
		if err != nil {
			return err
		}
		if sizeBytes < f.rec.SizeBytes {
			return fmt.Errorf("volumes only grow: %d bytes is smaller than its %d: %w", sizeBytes, f.rec.SizeBytes, sentinel.ErrInvalid)
		}
		exports, err := b.sw.list(ctx)
		if err != nil {
			return err
		}
		e := exports[f.rec.IQN]
		if e != nil {
			if live, err = b.mayGrowLive(e, hold != nil); err != nil {
				return err
			}
		}
		img := b.imagePath(f.recDir, name)
		if err := b.growImage(ctx, img, sizeBytes); err != nil {
			return err
		}
		if f.rec.SizeBytes != sizeBytes {
			f.rec.SizeBytes = sizeBytes
			if err := b.writeRecord(ctx, f.recDir, f.rec); err != nil {
				return err
			}
		}
		if e != nil && e.file == img {
			relun := func() error { return b.relun(ctx, e, live) }
			if live {
				t0 := time.Now()
				err = hold(func() error { t0 = time.Now(); return relun() })
				heldFor = time.Since(t0)
			} else {
				err = relun()
			}
			if err != nil {
				return err
			}
		}
		vol = b.volume(f, e, nil)
		if live {
			return b.rescan(ctx, f.rec)
		}
		return nil
	})
	if err != nil {
		return backends.Volume{}, opErr(op, name, err)
	}
	b.log.Info("volume expanded", slog.String("volume", name), slog.Int64("size_bytes", sizeBytes), slog.Bool("in_use_here", live), slog.Duration("lun_change", heldFor))
	return vol, nil
}

// mayGrowLive reports whether e's LUN is to be changed under a live
// session (held: the caller holds this host's writes), and refuses when
// an initiator other than this host's is logged in, or this host's is
// while its writes are not held.
func (b *Backend) mayGrowLive(e *export, held bool) (bool, error) {
	in := e.connected()
	if len(in) == 0 {
		return false, nil
	}
	if held {
		me, err := b.init.InitiatorName()
		if err != nil {
			return false, err
		}
		if others := slices.DeleteFunc(slices.Clone(in), func(s string) bool { return s == me }); len(others) > 0 {
			return false, fmt.Errorf("initiator %s is logged in to its iSCSI target besides this host, and tgt changes a LUN's size only by adding the LUN again, which would fail that host's commands: %w", strings.Join(others, ", "), sentinel.ErrInUse)
		}
		return true, nil
	}
	return false, fmt.Errorf("tgt changes a LUN's size only by adding the LUN again, which it refuses while initiator %s is logged in (and its commands would fail meanwhile): grow it where it is mounted, or stop the volume's containers, resize it, and start them again: %w", strings.Join(in, ", "), sentinel.ErrInUse)
}

// rescan makes this host re-read the size of the LUN of r, attached here.
func (b *Backend) rescan(ctx context.Context, r *record) error {
	rs, ok := b.init.(backends.Rescanner)
	if !ok {
		return errors.New("the LUN grew, but this host's initiator cannot re-read its size")
	}
	if err := rs.Rescan(ctx, b.target(r)); err != nil {
		return fmt.Errorf("the LUN grew, but this host did not re-read its size: %w", err)
	}
	return nil
}

// growImage lengthens a backing file on the target host (never shortens).
func (b *Backend) growImage(ctx context.Context, path string, size int64) error {
	return b.sizeFile(ctx, "lengthen backing file "+path, "backing file "+path, "", path, size, "grow", path)
}

// relun adds LUN 1 of e again over the same file, so that tgtd reads the
// file's size anew: one helper run on the target host deletes the LUN and
// adds it at once (no round trip between the two), the delete retried
// while tgtd says commands are in flight. Without live the caller has
// made sure no initiator is logged in; with live it holds the only
// initiator's writes, so the commands in flight end soon — or ctx does.
func (b *Backend) relun(ctx context.Context, e *export, live bool) error {
	wait := "once"
	if live {
		wait = "wait"
	}
	_, err := b.helper(ctx, "relun", strconv.Itoa(b.sw.port), strconv.Itoa(e.tid), strconv.Itoa(lun), e.file, wait, lunParams(e.iqn))
	switch {
	case err == nil:
		return nil
	case hostexec.ExitCode(err) == helperNoParams:
		return fmt.Errorf("set the identity of LUN %d of iSCSI target %s again after adding it: %w", lun, e.iqn, err)
	case hostexec.ExitCode(err) == helperNoReadd:
		return errors.Join(fmt.Errorf("add LUN %d backed by %s to iSCSI target %s again: %w", lun, e.file, e.iqn, err),
			errors.New("the target exports no LUN until the volume's next attach exports it again"))
	case hostexec.ExitCode(err) == helperExists:
		return fmt.Errorf("tgt refuses to change LUN %d of iSCSI target %s while commands are in flight: %w", lun, e.iqn, sentinel.ErrInUse)
	case ctx.Err() != nil:
		return fmt.Errorf("tgt still had commands in flight on LUN %d of iSCSI target %s when the call ended: %w", lun, e.iqn, context.Cause(ctx))
	}
	return fmt.Errorf("remove LUN %d of iSCSI target %s to take its new size: %w", lun, e.iqn, err)
}
