package iscsitarget

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/state"
)

// Snapshots live on the target host in <pool>/snapshots of their volume's
// pool, as two files like a volume's: S.img, a copy of the backing file
// (a reflink where the file system can, else a sparse copy), and S.json,
// the record that commits it, written atomically after the copy is
// durable. An image without a record is debris of an interrupted snapshot,
// replaced by the next snapshot of its name. A record that cannot be read
// is set aside on the target host (renamed S.json.damaged-<time>, kept for
// inspection) with one ERROR line; its image is no debris: the snapshot is
// listed with the damage, its name is not taken again, and it can be
// removed. Clones are made by Create
// with the backing file copied from a snapshot or a volume. Everything
// runs under the target host's lock, so a copy never races a change.

const snapSubdir = "snapshots"

var (
	_ backends.Snapshotter = (*Backend)(nil)
	_ backends.Cloner      = (*Backend)(nil)
)

type snapRecord struct {
	Name      string    `json:"name"`
	Volume    string    `json:"volume"`
	SizeBytes int64     `json:"size_bytes"`
	CreatedAt time.Time `json:"created_at"`
}

// snapFound is what a snapshot scan found of one snapshot name.
type snapFound struct {
	rec    *snapRecord
	recErr error
	dir    string // holding the record (or else the image)
	image  bool
	aside  []string // its records set aside as damaged, oldest first
}

func (b *Backend) snapDirs() []string {
	var out []string
	for _, d := range b.poolDirs() {
		out = append(out, d+"/"+snapSubdir)
	}
	return out
}

// snapScan reads every snapshot record and image with one helper run.
func (b *Backend) snapScan(ctx context.Context) (map[string]*snapFound, error) {
	items, err := b.helperItems(ctx, "snapscan", b.snapDirs()...)
	if err != nil {
		return nil, fmt.Errorf("read snapshot records on the target host: %w", err)
	}
	all := map[string]*snapFound{}
	for _, it := range items {
		kind, dir, n, content := it.kind, it.dir, it.name, it.content
		if checkName(n) != nil {
			continue
		}
		s := byName(all, n, func() *snapFound { return &snapFound{dir: dir} })
		switch kind {
		case "image":
			s.image = true
		case "aside":
			s.aside = append(s.aside, dir+"/"+string(content))
		case "record":
			var r snapRecord
			err := json.Unmarshal(content, &r)
			if err == nil && (r.Name != n || r.SizeBytes <= 0 || checkName(r.Volume) != nil) {
				err = errors.New("not a snapshot record")
			}
			if err != nil {
				s.recErr = fmt.Errorf("snapshot record %s/%s.json is damaged: %w", dir, n, err)
				continue
			}
			s.rec, s.dir = &r, dir
		}
	}
	for n, s := range all {
		switch {
		case s.rec != nil || !s.image:
		case s.recErr != nil:
			b.setAside(ctx, n, s)
		case len(s.aside) > 0:
			s.recErr = fmt.Errorf("snapshot record %s/%s.json was damaged and is set aside as %s", s.dir, n, s.aside[len(s.aside)-1])
		}
	}
	return all, nil
}

// setAside renames the damaged record of snapshot name on the target host
// (state.QuarantineName), keeping its image, and says so in s.recErr; a
// failure leaves the record in place, said in the one ERROR line.
func (b *Backend) setAside(ctx context.Context, name string, s *snapFound) {
	rec := s.dir + "/" + name + ".json"
	to := state.QuarantineName(rec, b.now())
	if _, err := b.helper(ctx, "aside", rec, to); err != nil {
		b.log.Error("snapshot record is damaged and cannot be set aside; the snapshot is kept and listed with the damage", slog.String("snapshot", name), slog.Any("error", s.recErr), slog.Any("set_aside_error", err))
		return
	}
	b.log.Error("snapshot record is damaged; set it aside, the snapshot is kept and listed with the damage", slog.String("snapshot", name), slog.String("set_aside_as", to), slog.Any("error", s.recErr))
	s.aside = append(s.aside, to)
	s.recErr = fmt.Errorf("%w; set aside as %s", s.recErr, to)
}

// findSnap returns the complete snapshot name (record and image).
func (b *Backend) findSnap(ctx context.Context, name string) (*snapFound, error) {
	all, err := b.snapScan(ctx)
	if err != nil {
		return nil, err
	}
	s := all[name]
	switch {
	case s == nil || (s.rec == nil && s.recErr == nil) || !s.image:
		return nil, sentinel.ErrNotFound
	case s.recErr != nil:
		return s, s.recErr
	}
	return s, nil
}

// CreateSnapshot implements backends.Snapshotter.
func (b *Backend) CreateSnapshot(ctx context.Context, volume, name string) (backends.Snapshot, error) {
	const op = "snapshot"
	if err := errors.Join(checkName(volume), checkName(name)); err != nil {
		return backends.Snapshot{}, opErr(op, volume, err)
	}
	var snap backends.Snapshot
	err := b.withLock(ctx, op, volume, func(ctx context.Context) error {
		f, err := b.load(ctx, volume)
		if err != nil {
			return err
		}
		all, err := b.snapScan(ctx)
		if err != nil {
			return err
		}
		dir := f.recDir + "/" + snapSubdir
		if s := all[name]; s != nil {
			if s.rec != nil || s.recErr != nil {
				return fmt.Errorf("snapshot %q exists already: %w", name, sentinel.ErrExists)
			}
			// An image without record: debris of an interrupted snapshot.
			if err := b.removeFiles(ctx, s.dir+"/"+name+".img"); err != nil {
				return err
			}
		}
		img := dir + "/" + name + ".img"
		if err := b.copyImage(ctx, b.imagePath(f.recDir, volume), img, f.rec.SizeBytes); err != nil {
			return err
		}
		r := snapRecord{Name: name, Volume: volume, SizeBytes: f.rec.SizeBytes, CreatedAt: b.now().UTC()}
		data, _ := json.Marshal(r) // plain fields: cannot fail
		if _, err := b.helper(ctx, "write", dir+"/"+name+".json", string(data)); err != nil {
			uctx := context.WithoutCancel(ctx)
			if rerr := b.removeFiles(uctx, dir+"/"+name+".json", img); rerr != nil {
				b.log.Error("cannot remove the files of a failed snapshot", slog.Any("error", rerr))
			}
			return fmt.Errorf("write the record of snapshot %q on the target host: %w", name, err)
		}
		snap = b.snapshot(&snapFound{rec: &r, dir: dir, image: true}, name)
		return nil
	})
	if err != nil {
		return backends.Snapshot{}, opErr(op, volume, err)
	}
	b.log.Info("snapshot taken", slog.String("volume", volume), slog.String("snapshot", name))
	return snap, nil
}

// copyImage makes dst a copy of src, size bytes long, on the target host.
func (b *Backend) copyImage(ctx context.Context, src, dst string, size int64) error {
	return b.sizeFile(ctx, "copy "+src+" to "+dst, src, dst, dst, size, "copy", src, dst)
}

// GetSnapshot implements backends.Snapshotter.
func (b *Backend) GetSnapshot(ctx context.Context, name string) (backends.Snapshot, error) {
	if err := checkName(name); err != nil {
		return backends.Snapshot{}, snapErr("get", name, err)
	}
	s, err := b.findSnap(ctx, name)
	if err != nil && s == nil {
		return backends.Snapshot{}, snapErr("get", name, err)
	}
	return b.snapshot(s, name), nil
}

// ListSnapshots implements backends.Snapshotter, sorted by name; a damaged
// record is listed with its damage.
func (b *Backend) ListSnapshots(ctx context.Context, volume string) ([]backends.Snapshot, error) {
	all, err := b.snapScan(ctx)
	if err != nil {
		return nil, fmt.Errorf("iscsitarget: list snapshots: %w", err)
	}
	var out []backends.Snapshot
	for n, s := range all {
		if !s.image || (s.rec == nil && s.recErr == nil) {
			continue
		}
		out = append(out, b.snapshot(s, n))
	}
	return backends.SnapshotsOf(out, volume), nil
}

// RemoveSnapshot implements backends.Snapshotter: record first, image second.
func (b *Backend) RemoveSnapshot(ctx context.Context, name string) error {
	const op = "remove"
	if err := checkName(name); err != nil {
		return snapErr(op, name, err)
	}
	err := b.withLock(ctx, "remove snapshot", name, func(ctx context.Context) error {
		s, err := b.findSnap(ctx, name)
		if s == nil {
			return err
		}
		return b.removeFiles(ctx, s.dir+"/"+name+".json", s.dir+"/"+name+".img")
	})
	if err != nil {
		return snapErr(op, name, err)
	}
	b.log.Info("snapshot removed", slog.String("snapshot", name))
	return nil
}

func (b *Backend) snapshot(s *snapFound, name string) backends.Snapshot {
	status := map[string]any{"backend": BackendName, "file": s.dir + "/" + name + ".img"}
	if s.rec == nil {
		status["damage"] = s.recErr.Error()
		return backends.Snapshot{Name: name, Status: status}
	}
	return backends.Snapshot{Name: name, Volume: s.rec.Volume, SizeBytes: s.rec.SizeBytes, CreatedAt: s.rec.CreatedAt, Status: status}
}

// CreateFrom implements backends.Cloner: Create, with the backing file a
// copy of the snapshot's or the volume's, found under the lock.
func (b *Backend) CreateFrom(ctx context.Context, req backends.CreateRequest, src backends.Source) (backends.Volume, error) {
	if (src.Snapshot == "") == (src.Volume == "") {
		return backends.Volume{}, opErrf("create", req.Name, "a clone needs one source, a snapshot or a volume: %w", sentinel.ErrInvalid)
	}
	return b.create(ctx, req, func(ctx context.Context, img string) error {
		from, size, err := b.sourceImage(ctx, src)
		if err != nil {
			return err
		}
		if req.SizeBytes < size {
			return fmt.Errorf("size %d is smaller than its source's (%d): %w", req.SizeBytes, size, sentinel.ErrInvalid)
		}
		return b.copyImage(ctx, from, img, req.SizeBytes)
	})
}

// sourceImage returns the file a clone copies, and its size.
func (b *Backend) sourceImage(ctx context.Context, src backends.Source) (string, int64, error) {
	if src.Snapshot != "" {
		s, err := b.findSnap(ctx, src.Snapshot)
		if err != nil {
			return "", 0, fmt.Errorf("snapshot %q: %w", src.Snapshot, err)
		}
		return s.dir + "/" + src.Snapshot + ".img", s.rec.SizeBytes, nil
	}
	f, err := b.load(ctx, src.Volume)
	if err != nil {
		return "", 0, fmt.Errorf("volume %q: %w", src.Volume, err)
	}
	return b.imagePath(f.recDir, src.Volume), f.rec.SizeBytes, nil
}

// snapErr names the backend, the operation and the snapshot in an error.
var snapErr = backends.KindErrors("iscsitarget", "snapshot")
