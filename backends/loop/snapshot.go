package loop

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/state"
)

// Snapshots live in <DataDir>/snapshots as two files each, like volumes:
// S.img, a copy of the volume's image (a reflink where the filesystem
// can), and S.json, the record that commits it. The image is complete
// and durable before the record is written atomically; an image without
// a record is debris, removed by New and by a CreateSnapshot of its name.
// A record that cannot be read is set aside (state.Quarantine: renamed
// S.json.damaged-<time>, kept for inspection, listed by `blockvol
// doctor`) with one ERROR line; it does not hide its snapshot, and its
// image is never debris: the snapshot is listed with the image's size and
// the damage in Status, cannot be taken again under its name, and can be
// removed.
const snapDirName = "snapshots"

var (
	_ backends.Snapshotter = (*Backend)(nil)
	_ backends.Cloner      = (*Backend)(nil)
	_ backends.Expander    = (*Backend)(nil)
)

// snapRecord is the on-disk JSON of one snapshot.
type snapRecord struct {
	Volume    string    `json:"volume"`
	SizeBytes int64     `json:"size_bytes"`
	CreatedAt time.Time `json:"created_at"`
	Copy      string    `json:"copy"` // copyReflink or copySparse

	damage string
}

func (b *Backend) snapDir() string { return SnapshotDir(b.dir) }

// SnapshotDir is where a loop backend with data directory dataDir keeps
// its snapshots (and the snapshot records it set aside as damaged).
func SnapshotDir(dataDir string) string { return filepath.Join(dataDir, snapDirName) }
func (b *Backend) snapImg(name string) string {
	return filepath.Join(b.snapDir(), name+imgSuffix)
}
func (b *Backend) snapJSON(name string) string {
	return filepath.Join(b.snapDir(), name+jsonSuffix)
}

// snapLock serializes operations on one snapshot name; names hold no '/',
// so its keys never meet a volume's.
func (b *Backend) snapLock(ctx context.Context, name string) (func(), error) {
	return b.locks.Lock(ctx, snapDirName+"/"+name)
}

// CreateSnapshot implements backends.Snapshotter: the volume's image is
// copied while the volume's lock is held. The caller freezes a mounted
// filesystem for the duration.
func (b *Backend) CreateSnapshot(ctx context.Context, volume, name string) (backends.Snapshot, error) {
	const op = "snapshot"
	if err := errors.Join(checkName(volume), checkName(name)); err != nil {
		return backends.Snapshot{}, opErr(op, volume, err)
	}
	unlock, err := b.locks.Lock(ctx, volume)
	if err != nil {
		return backends.Snapshot{}, opErr(op, volume, err)
	}
	defer unlock()
	unlockSnap, err := b.snapLock(ctx, name)
	if err != nil {
		return backends.Snapshot{}, opErr(op, volume, err)
	}
	defer unlockSnap()
	vr, err := b.load(volume)
	if err != nil {
		return backends.Snapshot{}, opErr(op, volume, err)
	}
	if err := b.clearSnapDebris(name); err != nil {
		return backends.Snapshot{}, opErr(op, volume, err)
	}
	how, err := b.copyInto(b.snapImg(name), b.imgPath(volume), vr.SizeBytes)
	if err != nil {
		return backends.Snapshot{}, opErr(op, volume, err)
	}
	r := snapRecord{Volume: volume, SizeBytes: vr.SizeBytes, CreatedAt: time.Now().UTC(), Copy: how}
	if err := b.writeSnapRecord(name, r); err != nil {
		for _, p := range []string{b.snapJSON(name), b.snapImg(name)} {
			if rerr := state.RemoveFile(p); rerr != nil {
				b.log.Error("cannot remove file of failed snapshot", slog.String("file", p), slog.Any("error", rerr))
			}
		}
		return backends.Snapshot{}, opErr(op, volume, err)
	}
	b.log.Info("snapshot taken", slog.String("volume", volume), slog.String("snapshot", name), slog.String("copy", how))
	return b.snapshot(name, r), nil
}

// clearSnapDebris makes the snapshot name free: ErrExists when the
// snapshot exists, and an image without record (an interrupted
// CreateSnapshot) is removed.
func (b *Backend) clearSnapDebris(name string) error {
	if err := os.Mkdir(b.snapDir(), 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	recOK, err := recordPresent(b.snapJSON(name))
	if err != nil {
		return err
	}
	if recOK {
		return fmt.Errorf("snapshot %q exists already: %w", name, sentinel.ErrExists)
	}
	if _, err := b.loadSnap(name); err == nil {
		return fmt.Errorf("snapshot %q exists already (its record is damaged and set aside: remove the snapshot first): %w", name, sentinel.ErrExists)
	} else if !errors.Is(err, sentinel.ErrNotFound) {
		return err
	}
	return state.RemoveFile(b.snapImg(name))
}

// copyInto makes dst, a new file (O_EXCL), a copy of src sized sizeBytes,
// durable with its directory entry, and returns how it was copied. On
// failure dst is removed.
func (b *Backend) copyInto(dst, src string, sizeBytes int64) (how string, err error) {
	in, err := os.OpenFile(src, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("%s appeared concurrently: %w", dst, sentinel.ErrExists)
	}
	if err != nil {
		return "", err
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			if rerr := state.RemoveFile(dst); rerr != nil {
				b.log.Error("cannot remove partial copy", slog.String("file", dst), slog.Any("error", rerr))
			}
		}
	}()
	if how, err = copyImage(out, in, sizeBytes); err != nil {
		return "", err
	}
	return how, state.SyncDir(filepath.Dir(dst))
}

// GetSnapshot implements backends.Snapshotter.
func (b *Backend) GetSnapshot(ctx context.Context, name string) (backends.Snapshot, error) {
	if err := checkName(name); err != nil {
		return backends.Snapshot{}, snapErr("get", name, err)
	}
	if err := ctx.Err(); err != nil {
		return backends.Snapshot{}, snapErr("get", name, err)
	}
	r, err := b.loadSnap(name)
	if err != nil {
		return backends.Snapshot{}, snapErr("get", name, err)
	}
	return b.snapshot(name, r), nil
}

// ListSnapshots implements backends.Snapshotter; snapshots come sorted by
// name.
func (b *Backend) ListSnapshots(ctx context.Context, volume string) ([]backends.Snapshot, error) {
	entries, err := os.ReadDir(b.snapDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("loop: list snapshots: %w", err)
	}
	have := make(map[string]bool, len(entries))
	for _, e := range entries {
		have[e.Name()] = true
	}
	listed := map[string]bool{}
	var out []backends.Snapshot
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), jsonSuffix)
		if !ok {
			// A snapshot whose record was set aside, unless it has a record
			// again (listed under that) or is listed already.
			name = asideOf(e.Name())
			ok = name != "" && !have[name+jsonSuffix] && !listed[name]
		}
		if !ok || checkName(name) != nil || strings.HasPrefix(name, ".") {
			continue
		}
		listed[name] = true
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("loop: list snapshots: %w", err)
		}
		r, err := b.loadSnap(name)
		if errors.Is(err, sentinel.ErrNotFound) {
			continue // a record set aside of a snapshot since removed
		}
		if err != nil {
			b.log.Warn("skipping snapshot whose files cannot be read", slog.String("snapshot", name), slog.Any("error", err))
			continue
		}
		out = append(out, b.snapshot(name, r))
	}
	return backends.SnapshotsOf(out, volume), nil
}

// RemoveSnapshot implements backends.Snapshotter: the record goes first
// (the snapshot is gone at that instant), the image second.
func (b *Backend) RemoveSnapshot(ctx context.Context, name string) error {
	const op = "remove"
	if err := checkName(name); err != nil {
		return snapErr(op, name, err)
	}
	unlock, err := b.snapLock(ctx, name)
	if err != nil {
		return snapErr(op, name, err)
	}
	defer unlock()
	if _, err := b.loadSnap(name); err != nil {
		return snapErr(op, name, err)
	}
	if err := state.RemoveFile(b.snapJSON(name)); err != nil {
		return snapErr(op, name, err)
	}
	if err := state.RemoveFile(b.snapImg(name)); err != nil {
		return snapErr(op, name, err)
	}
	b.log.Info("snapshot removed", slog.String("snapshot", name))
	return nil
}

// loadSnap reads the record of an existing snapshot (record, or a record
// set aside, and image); otherwise ErrNotFound. A damaged record is set
// aside, and it or one set aside earlier yields the image's size and the
// damage.
func (b *Backend) loadSnap(name string) (snapRecord, error) {
	present, err := recordPresent(b.snapJSON(name))
	if err != nil {
		return snapRecord{}, err
	}
	var aside []string
	if !present {
		if aside, err = b.snapAside(name); err != nil {
			return snapRecord{}, err
		}
	}
	fi, ierr := os.Lstat(b.snapImg(name))
	if (!present && len(aside) == 0) || errors.Is(ierr, fs.ErrNotExist) {
		return snapRecord{}, sentinel.ErrNotFound
	}
	if ierr != nil {
		return snapRecord{}, ierr
	}
	if !fi.Mode().IsRegular() {
		return snapRecord{}, fmt.Errorf("%s is not a regular file", b.snapImg(name))
	}
	damaged := func(why string) snapRecord {
		return snapRecord{
			SizeBytes: fi.Size(),
			CreatedAt: fi.ModTime().UTC(),
			damage:    why + ": the size and creation time are the image's, the volume is unknown",
		}
	}
	if !present {
		return damaged(fmt.Sprintf("record set aside as %s (damaged)", aside[len(aside)-1])), nil
	}
	data, err := readSmallFile(atFDCWD, b.snapJSON(name))
	var r snapRecord
	if err == nil {
		err = json.Unmarshal(data, &r)
	}
	if err == nil && (r.SizeBytes <= 0 || checkName(r.Volume) != nil) {
		err = fmt.Errorf("bad size_bytes %d or volume %q", r.SizeBytes, r.Volume)
	}
	if err == nil {
		return r, nil
	}
	to, qerr := state.Quarantine(b.snapJSON(name))
	if qerr != nil {
		b.log.Error("snapshot record is damaged and cannot be set aside; the snapshot is kept and listed with the damage", slog.String("snapshot", name), slog.Any("error", err), slog.Any("set_aside_error", qerr))
		return damaged(fmt.Sprintf("record %s is damaged (%v)", b.snapJSON(name), err)), nil
	}
	b.log.Error("snapshot record is damaged; set it aside, the snapshot is kept and listed with the damage", slog.String("snapshot", name), slog.String("set_aside_as", to), slog.Any("error", err))
	return damaged(fmt.Sprintf("record %s was damaged (%v) and is set aside as %s", b.snapJSON(name), err, to)), nil
}

// snapAside lists the records of snapshot name set aside as damaged, oldest
// first.
func (b *Backend) snapAside(name string) ([]string, error) {
	entries, err := os.ReadDir(b.snapDir())
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if asideOf(e.Name()) == name {
			out = append(out, filepath.Join(b.snapDir(), e.Name()))
		}
	}
	return out, nil
}

// asideOf returns the snapshot whose record file n is, once set aside as
// damaged; "" when n is not one.
func asideOf(n string) string {
	if !state.IsQuarantined(n) {
		return ""
	}
	name, _, ok := strings.Cut(n, jsonSuffix+".")
	if !ok || checkName(name) != nil {
		return ""
	}
	return name
}

func (b *Backend) writeSnapRecord(name string, r snapRecord) error {
	return writeJSON(b.snapJSON(name), r)
}

func (b *Backend) snapshot(name string, r snapRecord) backends.Snapshot {
	status := map[string]any{"backend": BackendName, "image": b.snapImg(name), "copy": r.Copy}
	if r.damage != "" {
		status["damage"] = r.damage
	}
	return backends.Snapshot{Name: name, Volume: r.Volume, SizeBytes: r.SizeBytes, CreatedAt: r.CreatedAt, Status: status}
}

// CreateFrom implements backends.Cloner: the new volume's image is a copy
// (a reflink where the filesystem can) of the snapshot's or the volume's
// image, sized req.SizeBytes, committed by its record as Create does.
func (b *Backend) CreateFrom(ctx context.Context, req backends.CreateRequest, src backends.Source) (backends.Volume, error) {
	var how, from string
	r, log, err := b.create(ctx, req, func(_ *slog.Logger, img string) (func(), error) {
		srcImg, srcSize, f, unlockSrc, err := b.source(ctx, src)
		if err != nil {
			return nil, err
		}
		if req.SizeBytes < srcSize {
			unlockSrc()
			return nil, fmt.Errorf("size %d is smaller than its source's (%d): %w", req.SizeBytes, srcSize, sentinel.ErrInvalid)
		}
		if how, err = b.copyInto(img, srcImg, req.SizeBytes); err != nil {
			unlockSrc()
			return nil, err
		}
		from = f
		return unlockSrc, nil
	})
	if err != nil {
		return backends.Volume{}, err
	}
	log.Info("volume cloned", slog.String("from", from), slog.String("copy", how), slog.Int64("size_bytes", r.SizeBytes))
	v := b.volume(req.Name, r, nil)
	v.Status["copy"] = how
	return v, nil
}

// source locks and finds the image a clone is copied from, and its size.
func (b *Backend) source(ctx context.Context, src backends.Source) (img string, size int64, from string, unlock func(), err error) {
	switch {
	case src.Snapshot != "" && src.Volume == "":
		size, unlock, err = lockSize(ctx, "snapshot", src.Snapshot, b.snapLock, func(n string) (int64, error) {
			r, err := b.loadSnap(n)
			return r.SizeBytes, err
		})
		if err != nil {
			return "", 0, "", nil, err
		}
		return b.snapImg(src.Snapshot), size, "snapshot " + src.Snapshot, unlock, nil
	case src.Volume != "" && src.Snapshot == "":
		size, unlock, err = lockSize(ctx, "volume", src.Volume, b.locks.Lock, func(n string) (int64, error) {
			r, err := b.load(n)
			return r.SizeBytes, err
		})
		if err != nil {
			return "", 0, "", nil, err
		}
		return b.imgPath(src.Volume), size, "volume " + src.Volume, unlock, nil
	}
	return "", 0, "", nil, fmt.Errorf("a clone needs one source, a snapshot or a volume: %w", sentinel.ErrInvalid)
}

// lockSize checks name, takes its lock with lock and reads its size with
// load (errors of load name the kind and name). On success the caller
// holds the lock and releases it with unlock; on failure nothing is held.
func lockSize(ctx context.Context, kind, name string, lock func(context.Context, string) (func(), error), load func(string) (int64, error)) (size int64, unlock func(), err error) {
	if err := checkName(name); err != nil {
		return 0, nil, err
	}
	if unlock, err = lock(ctx, name); err != nil {
		return 0, nil, err
	}
	if size, err = load(name); err != nil {
		unlock()
		return 0, nil, fmt.Errorf("%s %q: %w", kind, name, err)
	}
	return size, unlock, nil
}

// Expand implements backends.Expander: the image is lengthened first (an
// image longer than its record is harmless, and a repeated Expand
// finishes the job), then the record, then every loop device of the
// image is told its new capacity (`losetup --set-capacity`).
func (b *Backend) Expand(ctx context.Context, name string, sizeBytes int64) (backends.Volume, error) {
	const op = "expand"
	if err := backends.CheckExpand(name, maxNameLen, sizeBytes); err != nil {
		return backends.Volume{}, opErr(op, name, err)
	}
	unlock, log, err := b.lock(ctx, op, name)
	if err != nil {
		return backends.Volume{}, err
	}
	defer unlock()
	r, err := b.load(name)
	if err != nil {
		return backends.Volume{}, opErr(op, name, err)
	}
	if sizeBytes < r.SizeBytes {
		return backends.Volume{}, opErrf(op, name, "volumes only grow: %d bytes is smaller than its %d: %w", sizeBytes, r.SizeBytes, sentinel.ErrInvalid)
	}
	img := b.imgPath(name)
	if err := lengthen(img, sizeBytes); err != nil {
		return backends.Volume{}, opErr(op, name, err)
	}
	if r.SizeBytes != sizeBytes {
		r.SizeBytes = sizeBytes
		r.damage = ""
		if err := b.writeRecord(name, r); err != nil {
			return backends.Volume{}, opErr(op, name, err)
		}
	}
	devs, err := b.devicesOf(img)
	if err != nil {
		return backends.Volume{}, opErr(op, name, err)
	}
	for _, dev := range devs {
		if _, err := b.run.Run(ctx, "losetup", "--set-capacity", dev); err != nil {
			return backends.Volume{}, opErrf(op, name, "losetup --set-capacity %s: %w", dev, err)
		}
	}
	log.Info("volume expanded", slog.Int64("size_bytes", sizeBytes), slog.Any("devices", devs))
	return b.volume(name, r, devs), nil
}

// lengthen makes img at least size bytes long, durably; never shorter.
func lengthen(img string, size int64) error {
	f, err := os.OpenFile(img, os.O_WRONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() >= size {
		return nil
	}
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("lengthen %s: %w", img, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", img, err)
	}
	return f.Close()
}

// sweepSnapshots removes, at start-up, snapshot images without a record
// (interrupted CreateSnapshot; an image whose record is set aside as
// damaged is kept) and temporary files of interrupted record
// writes. Failures are logged, never fatal.
func (b *Backend) sweepSnapshots(log *slog.Logger) {
	entries, have, err := readNames(b.snapDir())
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		log.Warn("cannot read snapshot directory", slog.Any("error", err))
		return
	}
	for _, e := range entries {
		if name := asideOf(e.Name()); name != "" {
			have[name+jsonSuffix] = true // set aside, its image is no debris
		}
	}
	for _, e := range entries {
		n := e.Name()
		name, isImg := strings.CutSuffix(n, imgSuffix)
		debris := e.Type().IsRegular() && (isTempName(n) || isImg && !have[name+jsonSuffix])
		if !debris {
			continue
		}
		log.Warn("removing debris of an interrupted snapshot", slog.String("file", n))
		if err := os.Remove(filepath.Join(b.snapDir(), n)); err != nil {
			log.Warn("cannot remove snapshot debris", slog.String("file", n), slog.Any("error", err))
		}
	}
}

// snapErr names the backend, the operation and the snapshot in an error.
var snapErr = backends.KindErrors("loop", "snapshot")
