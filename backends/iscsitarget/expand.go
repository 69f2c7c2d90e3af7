package iscsitarget

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/internal/sentinel"
)

var _ backends.Expander = (*Backend)(nil)

// tgtLUNActive is tgtd's refusal to delete a LUN with commands in flight.
const tgtLUNActive = "this logical unit is still active"

// Expand implements backends.Expander. tgt reads a backing file's size
// when a LUN is added and never again, takes no size update in place
// (tgtadm --op update refuses it), and refuses to delete a LUN while
// commands are in flight (an initiator's commands would fail in between
// anyway). So a volume grows only while no initiator is logged in to its
// target: the backing file is lengthened, the record says the new size,
// and LUN 1 is added again over the same file (same SCSI ID and serial);
// a logged-in initiator yields sentinel.ErrInUse naming it.
func (b *Backend) Expand(ctx context.Context, name string, sizeBytes int64) (backends.Volume, error) {
	const op = "expand"
	if err := backends.CheckExpand(name, maxNameLen, sizeBytes); err != nil {
		return backends.Volume{}, opErr(op, name, err)
	}
	var vol backends.Volume
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
			if in := e.connected(); len(in) > 0 {
				return fmt.Errorf("tgt changes a LUN's size only by adding the LUN again, which it refuses while initiator %s is logged in (and its commands would fail meanwhile): stop the volume's containers, resize it, and start them again: %w", strings.Join(in, ", "), sentinel.ErrInUse)
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
			if err := b.sw.relun(ctx, e); err != nil {
				return err
			}
		}
		vol = b.volume(f, e, nil)
		return nil
	})
	if err != nil {
		return backends.Volume{}, opErr(op, name, err)
	}
	b.log.Info("volume expanded", slog.String("volume", name), slog.Int64("size_bytes", sizeBytes))
	return vol, nil
}

// growImage lengthens a backing file on the target host (never shortens).
func (b *Backend) growImage(ctx context.Context, path string, size int64) error {
	_, err := b.helper(ctx, "grow", path, strconv.FormatInt(size, 10))
	switch hostexec.ExitCode(err) {
	case -1:
		if err == nil {
			return nil
		}
	case helperNotFound:
		return fmt.Errorf("backing file %s is missing on the target host: %w", path, sentinel.ErrNotFound)
	case helperSizeError:
		return fmt.Errorf("the target host's file system refused size %d for %s: %w: %w", size, path, err, sentinel.ErrInvalid)
	}
	return fmt.Errorf("lengthen backing file %s on the target host: %w", path, err)
}

// relun adds LUN 1 of e again over the same file, so that tgtd reads the
// file's size anew. The caller has made sure no initiator is logged in.
func (t *tgt) relun(ctx context.Context, e *export) error {
	tid := strconv.Itoa(e.tid)
	_, err := t.run(ctx, "--mode", "logicalunit", "--op", "delete", "--tid", tid, "--lun", strconv.Itoa(lun))
	if tgtErr(err) == tgtLUNActive {
		return fmt.Errorf("tgt refuses to change LUN %d of iSCSI target %s while commands are in flight: %w", lun, e.iqn, sentinel.ErrInUse)
	}
	if err != nil {
		return fmt.Errorf("remove LUN %d of iSCSI target %s to take its new size: %w", lun, e.iqn, err)
	}
	_, err = t.run(ctx, "--mode", "logicalunit", "--op", "new", "--tid", tid, "--lun", strconv.Itoa(lun), "--backing-store", e.file)
	if err != nil {
		return errors.Join(fmt.Errorf("add LUN %d backed by %s to iSCSI target %s again: %w", lun, e.file, e.iqn, err),
			errors.New("the target exports no LUN until the volume's next attach exports it again"))
	}
	return nil
}
