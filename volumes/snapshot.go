package volumes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sort"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/quote"
	"github.com/blockvol/blockvol/internal/sentinel"
)

// FilesystemTools is what snapshots, clones and growing need of the fs
// package beyond Filesystem (*fs.FS has both). A Config.FS without them
// refuses those operations in one sentence.
type FilesystemTools interface {
	// Freeze makes the filesystem at mountpoint consistent on its device
	// and holds its writers; Thaw, which runs even after ctx has ended,
	// lets them go.
	Freeze(ctx context.Context, mountpoint string) error
	Thaw(ctx context.Context, mountpoint string) error
	// Grow grows the filesystem mounted at mountpoint from dev to fill dev.
	Grow(ctx context.Context, dev, mountpoint string) error
	// GrowUnmounted grows the unmounted filesystem on dev when its type
	// can be grown so, and reports whether it did.
	GrowUnmounted(ctx context.Context, dev string) (bool, error)
	// NewUUID gives the unmounted filesystem on dev a new UUID; scratch is
	// a directory it may mount dev on meanwhile.
	NewUUID(ctx context.Context, dev, scratch string) error
}

// Meta keys of the work a first mount (or the next mount) still owes a
// volume: a clone's filesystem needs its own UUID before it is mounted
// beside its source, and a filesystem smaller than its device (a larger
// clone, a volume grown while not mounted here) is grown once mounted.
// Each is cleared only once done, and each step is harmless to repeat.
const (
	metaNewUUIDKey = "blockvol.new-uuid-pending"
	metaGrowKey    = "blockvol.grow-pending"
)

// SnapshotInfo is one snapshot and the backend that keeps it.
type SnapshotInfo struct {
	backends.Snapshot
	Backend string
}

// snapshotLock is the lock key of a snapshot name: volume names hold no
// '/', so it never meets a volume's.
func snapshotLock(name string) string { return "snapshot/" + name }

func (d *Core) tools() (FilesystemTools, error) {
	t, ok := d.cfg.FS.(FilesystemTools)
	if !ok {
		return nil, errors.New("this host's filesystem layer cannot freeze, grow or re-identify filesystems")
	}
	return t, nil
}

// CreateSnapshot takes a snapshot called snapshot of volume. A volume
// mounted on this host is frozen for the instant the backend takes it,
// so the snapshot is crash-consistent (what a power cut would have left,
// with the journal clean), and thawed on every path. The volume's lock is
// held throughout: no mount or unmount of it runs meanwhile.
func (d *Core) CreateSnapshot(ctx context.Context, volume, snapshot string) (_ SnapshotInfo, err error) {
	c := d.begin(ctx, "snapshot", volume, d.cfg.CreateTimeout, "snapshot", quote.Prefix(snapshot))
	defer func() { c.end(err) }()
	ctx, log := c.ctx, c.log
	if err := errors.Join(ValidateName(volume), ValidateName(snapshot)); err != nil {
		return SnapshotInfo{}, err
	}
	unlock, err := d.acquire(ctx, volume)
	if err != nil {
		return SnapshotInfo{}, err
	}
	defer unlock()
	unlockSnap, err := d.lockVolume(ctx, snapshotLock(snapshot))
	if err != nil {
		return SnapshotInfo{}, err
	}
	defer unlockSnap()
	_, bn, err := d.lookup(ctx, volume)
	if err != nil {
		return SnapshotInfo{}, err
	}
	c.backend = bn
	sn, err := d.snapshotter(bn)
	if err != nil {
		return SnapshotInfo{}, err
	}
	if s, err := d.findSnapshot(ctx, snapshot); err == nil {
		return SnapshotInfo{}, &userError{kind: sentinel.ErrExists, msg: fmt.Sprintf("snapshot %s exists already (of volume %s)", quote.Short(snapshot), quote.Short(s.Volume))}
	} else if !errors.Is(err, sentinel.ErrNotFound) {
		return SnapshotInfo{}, err
	}
	var s backends.Snapshot
	err = d.frozen(ctx, log, volume, func() error {
		var err error
		s, err = sn.CreateSnapshot(ctx, volume, snapshot)
		return err
	})
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("snapshot %s of volume %s cannot be taken: %w", quote.Short(snapshot), quote.Short(volume), err)
	}
	log.Info("snapshot taken", "backend", bn, "size_bytes", s.SizeBytes)
	return SnapshotInfo{Snapshot: s, Backend: bn}, nil
}

// frozen runs take with the filesystem of volume frozen when it is
// mounted on this host (as a filesystem), and thaws it afterwards, even
// when take fails or ctx ends. The caller holds the volume's lock. The
// record says "frozen" meanwhile, so that Recover thaws a filesystem
// whose plugin was killed in between.
func (d *Core) frozen(ctx context.Context, log *slog.Logger, volume string, take func() error) (err error) {
	if err := d.settle(ctx, log, volume); err != nil {
		return err
	}
	r, ok := d.recs.get(volume)
	if !ok || r.Block || r.Phase != phaseMounted {
		return take()
	}
	tools, err := d.tools()
	if err != nil {
		return err
	}
	r.Frozen = true
	if err := d.recs.put(r); err != nil {
		return err
	}
	defer func() {
		if terr := tools.Thaw(ctx, r.Mountpoint); terr != nil {
			log.Error("the volume's filesystem could not be thawed; its writers wait until it is (fsfreeze --unfreeze)", "mountpoint", r.Mountpoint, "err", terr)
			err = errors.Join(err, terr)
			return
		}
		r.Frozen = false
		if perr := d.recs.put(r); perr != nil {
			log.Error("record not updated after thaw", "err", perr)
		}
	}()
	if err := tools.Freeze(ctx, r.Mountpoint); err != nil {
		return err
	}
	return take()
}

// thawLeftover thaws the filesystem of a record marked frozen: a plugin
// killed while a snapshot was being taken.
func (d *Core) thawLeftover(ctx context.Context, log *slog.Logger, r record) record {
	if !r.Frozen {
		return r
	}
	tools, err := d.tools()
	if err == nil {
		err = tools.Thaw(ctx, r.Mountpoint)
	}
	if err != nil {
		// Not frozen any more (EINVAL) is the common case after a reboot.
		log.Warn("thaw of a filesystem left frozen by an interrupted snapshot failed", "mountpoint", r.Mountpoint, "err", err)
	} else {
		log.Warn("thawed a filesystem left frozen by an interrupted snapshot", "mountpoint", r.Mountpoint)
	}
	r.Frozen = false
	if err := d.recs.put(r); err != nil {
		log.Error("record not updated after thaw", "err", err)
	}
	return r
}

func (d *Core) snapshotter(bn string) (backends.Snapshotter, error) {
	be, err := d.backend(bn)
	if err != nil {
		return nil, err
	}
	sn, ok := be.(backends.Snapshotter)
	if !ok {
		return nil, invalidf("backend %s cannot take snapshots", bn)
	}
	return sn, nil
}

// findSnapshot looks a snapshot up on every backend that takes them. It
// wraps sentinel.ErrNotFound only when every one answered without it.
func (d *Core) findSnapshot(ctx context.Context, name string) (SnapshotInfo, error) {
	var failures []error
	for _, bn := range d.cfg.Defaults.Backends {
		sn, ok := d.cfg.Backends[bn].(backends.Snapshotter)
		if !ok {
			continue
		}
		s, err := sn.GetSnapshot(ctx, name)
		if err == nil {
			return SnapshotInfo{Snapshot: s, Backend: bn}, nil
		}
		if !errors.Is(err, sentinel.ErrNotFound) {
			failures = append(failures, fmt.Errorf("backend %s: %w", bn, err))
		}
	}
	if len(failures) > 0 {
		return SnapshotInfo{}, fmt.Errorf("snapshot %s could not be looked up: %w", quote.Short(name), errors.Join(failures...))
	}
	return SnapshotInfo{}, &userError{kind: sentinel.ErrNotFound, msg: fmt.Sprintf("snapshot %s does not exist", quote.Short(name))}
}

// GetSnapshot describes one snapshot.
func (d *Core) GetSnapshot(ctx context.Context, name string) (_ SnapshotInfo, err error) {
	c := d.begin(ctx, "snapshot-get", name, d.cfg.OtherTimeout)
	defer func() { c.end(err) }()
	if err := ValidateName(name); err != nil {
		return SnapshotInfo{}, err
	}
	return d.findSnapshot(c.ctx, name)
}

// Snapshots lists the snapshots of volume (every snapshot for ""), sorted
// by name. A backend that fails is left out and logged, unless all fail.
func (d *Core) Snapshots(ctx context.Context, volume string) (_ []SnapshotInfo, err error) {
	c := d.begin(ctx, "snapshot-list", volume, d.cfg.OtherTimeout)
	defer func() { c.end(err) }()
	if volume != "" {
		if err := ValidateName(volume); err != nil {
			return nil, err
		}
	}
	out := []SnapshotInfo{}
	var failures []error
	asked := 0
	for _, bn := range d.cfg.Defaults.Backends {
		sn, ok := d.cfg.Backends[bn].(backends.Snapshotter)
		if !ok {
			continue
		}
		asked++
		snaps, err := sn.ListSnapshots(c.ctx, volume)
		if err != nil {
			c.log.Error("backend snapshot list failed", "backend", bn, "err", err)
			failures = append(failures, err)
			continue
		}
		for _, s := range snaps {
			out = append(out, SnapshotInfo{Snapshot: s, Backend: bn})
		}
	}
	if asked > 0 && len(failures) == asked {
		return nil, errors.Join(failures...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// RemoveSnapshot deletes a snapshot; volumes cloned from it stay.
func (d *Core) RemoveSnapshot(ctx context.Context, name string) (err error) {
	c := d.begin(ctx, "snapshot-remove", name, d.cfg.OtherTimeout)
	defer func() { c.end(err) }()
	ctx = c.ctx
	if err := ValidateName(name); err != nil {
		return err
	}
	unlock, err := d.lockVolume(ctx, snapshotLock(name))
	if err != nil {
		return err
	}
	defer unlock()
	s, err := d.findSnapshot(ctx, name)
	if err != nil {
		return err
	}
	c.backend = s.Backend
	sn, err := d.snapshotter(s.Backend)
	if err != nil {
		return err
	}
	if err := sn.RemoveSnapshot(ctx, name); err != nil && !errors.Is(err, sentinel.ErrNotFound) {
		return fmt.Errorf("snapshot %s cannot be removed: %w", quote.Short(name), err)
	}
	c.log.Info("snapshot removed", "backend", s.Backend)
	return nil
}

// Resize grows a volume to sizeBytes: the backend grows it, and when it is
// mounted on this host its filesystem is grown online, under the users'
// feet; otherwise its next mount grows it. A smaller size is refused.
// Resizing to the size it has finishes a grow that was interrupted.
func (d *Core) Resize(ctx context.Context, name string, sizeBytes int64) (err error) {
	c := d.begin(ctx, "resize", name, d.cfg.MountTimeout, "size_bytes", sizeBytes)
	defer func() { c.end(err) }()
	ctx, log := c.ctx, c.log
	vol, bn, unlock, err := d.lockedLookup(c, name)
	if err != nil {
		return err
	}
	defer unlock()
	if err := d.settle(ctx, log, name); err != nil {
		return err
	}
	be := d.cfg.Backends[bn]
	ex, ok := be.(backends.Expander)
	if !ok {
		return invalidf("backend %s cannot grow volumes", bn)
	}
	if sizeBytes < vol.SizeBytes {
		return invalidf("volume %s is %s and cannot shrink to %s; volumes only grow", quote.Short(name), FormatSize(vol.SizeBytes), FormatSize(sizeBytes))
	}
	if sizeBytes > maxSizeBytes {
		return invalidf("size %s is larger than the largest volume blockvol makes (%s)", FormatSize(sizeBytes), FormatSize(maxSizeBytes))
	}
	// The debt first: a crash after the backend grew leaves it to the next
	// mount (or the next Resize) to grow the filesystem.
	meta := withKey(vol.Meta, metaGrowKey)
	if opts, err := decodeMeta(vol.Meta, d.defaults); err == nil && vol.Meta[metaOptionsKey] != "" {
		opts.SizeBytes = sizeBytes
		meta[metaOptionsKey] = encodeOptions(opts)
	}
	if err := be.SetMeta(ctx, name, meta); err != nil {
		return fmt.Errorf("volume %s cannot be grown: %w", quote.Short(name), err)
	}
	// A backend that has the size already (a node-side expand after the
	// controller's) is not asked again: iscsitarget refuses to touch a LUN
	// an initiator is logged in to, cinder a same-size extend.
	r, here := d.recs.get(name)
	if sizeBytes > vol.SizeBytes {
		if err := d.expand(ctx, log, ex, name, r, here, sizeBytes); err != nil {
			return fmt.Errorf("volume %s cannot be grown: %w", quote.Short(name), err)
		}
	}
	if !here || r.Phase != phaseMounted {
		log.Info("volume grown; its filesystem grows at its next mount", "backend", bn)
		return nil
	}
	if r.Block {
		// The user's raw device: its content is not ours to grow.
		return be.SetMeta(ctx, name, withoutKey(meta, metaGrowKey))
	}
	if err := d.growMounted(ctx, r); err != nil {
		return fmt.Errorf("volume %s grew but its filesystem did not: %w", quote.Short(name), err)
	}
	if err := be.SetMeta(ctx, name, withoutKey(meta, metaGrowKey)); err != nil {
		return fmt.Errorf("volume %s: %w", quote.Short(name), err)
	}
	log.Info("volume and its mounted filesystem grown", "backend", bn, "mountpoint", r.Mountpoint)
	return nil
}

// expand asks the backend to grow volume name, whose record on this
// host is r when here. A filesystem mounted here, on a backend that needs this
// host's writes held for it (backends.HeldExpander), is grown with its
// filesystem frozen for that step (thawed on every path).
func (d *Core) expand(ctx context.Context, log *slog.Logger, ex backends.Expander, name string, r record, here bool, sizeBytes int64) error {
	hx, ok := ex.(backends.HeldExpander)
	if !ok || !here || r.Block || r.Phase != phaseMounted {
		_, err := ex.Expand(ctx, name, sizeBytes)
		return err
	}
	hold := func(step func() error) error { return d.frozen(ctx, log, name, step) }
	_, err := hx.ExpandHeld(ctx, name, sizeBytes, hold)
	return err
}

// lockedLookup takes the lock of name and finds its volume, for call c;
// the caller releases the lock.
func (d *Core) lockedLookup(c *call, name string) (backends.Volume, string, func(), error) {
	unlock, err := d.acquire(c.ctx, name)
	if err != nil {
		return backends.Volume{}, "", nil, err
	}
	vol, bn, err := d.lookup(c.ctx, name)
	if err != nil {
		unlock()
		return backends.Volume{}, "", nil, err
	}
	c.backend = bn
	return vol, bn, unlock, nil
}

// growMounted grows the filesystem of a volume mounted here.
func (d *Core) growMounted(ctx context.Context, r record) error {
	tools, err := d.tools()
	if err != nil {
		return err
	}
	return tools.Grow(ctx, r.Device, r.Mountpoint)
}

// withKey returns a copy of m with key set to "true".
func withKey(m map[string]string, key string) map[string]string {
	out := withoutKey(m, key)
	out[key] = "true"
	return out
}

// createClone makes name, a copy of opts.From (a snapshot, or else a
// volume), on the source's backend. The clone's filesystem is the
// source's: never formatted (not fresh); its first mount gives it a new
// UUID and grows it when the clone is larger. A source volume mounted on
// this host is frozen while it is copied. The caller holds name's lock.
func (d *Core) createClone(ctx context.Context, log *slog.Logger, name string, opts Options) (backend string, err error) {
	src, srcSize, bn, unlock, err := d.cloneSource(ctx, opts.From)
	if err != nil {
		return "", err
	}
	defer unlock()
	cl, ok := d.cfg.Backends[bn].(backends.Cloner)
	if !ok {
		return "", invalidf("backend %s cannot clone volumes", bn)
	}
	if opts.SizeBytes == 0 {
		opts.SizeBytes = srcSize
	}
	if opts.SizeBytes < srcSize {
		return "", invalidf("a clone cannot be smaller than its source: %s is %s, option size asks for %s", quote.Short(opts.From), FormatSize(srcSize), FormatSize(opts.SizeBytes))
	}
	opts.Backend = bn
	meta := encodeMeta(opts)
	delete(meta, metaFreshKey) // the source's data: never formatted
	meta[metaNewUUIDKey] = "true"
	if opts.SizeBytes > srcSize {
		meta[metaGrowKey] = "true"
	}
	req := backends.CreateRequest{Name: name, SizeBytes: opts.SizeBytes, VolumeType: opts.VolumeType, IOPS: opts.IOPS, AvailabilityZone: opts.AvailabilityZone, Meta: meta}
	take := func() error { _, err := cl.CreateFrom(ctx, req, src); return err }
	if src.Volume != "" {
		err = d.frozen(ctx, log, src.Volume, take)
	} else {
		err = take()
	}
	if err != nil {
		return "", fmt.Errorf("volume %s cannot be cloned from %s on backend %s: %w", quote.Short(name), quote.Short(opts.From), bn, err)
	}
	log.Info("volume cloned", "from", opts.From, "backend", bn, "size_bytes", opts.SizeBytes)
	return bn, nil
}

// cloneSource finds and locks what from names: a snapshot first, else a
// volume (whose lock is taken: it may be frozen meanwhile).
func (d *Core) cloneSource(ctx context.Context, from string) (backends.Source, int64, string, func(), error) {
	unlock, err := d.lockVolume(ctx, snapshotLock(from))
	if err != nil {
		return backends.Source{}, 0, "", nil, err
	}
	s, err := d.findSnapshot(ctx, from)
	if err == nil {
		return backends.Source{Snapshot: from}, s.SizeBytes, s.Backend, unlock, nil
	}
	unlock()
	if !errors.Is(err, sentinel.ErrNotFound) {
		return backends.Source{}, 0, "", nil, err
	}
	if unlock, err = d.lockVolume(ctx, from); err != nil {
		return backends.Source{}, 0, "", nil, err
	}
	vol, bn, err := d.lookup(ctx, from)
	if errors.Is(err, sentinel.ErrNotFound) {
		unlock()
		return backends.Source{}, 0, "", nil, &userError{kind: sentinel.ErrNotFound, msg: fmt.Sprintf("option from %s names neither a snapshot nor a volume", quote.Short(from))}
	}
	if err != nil {
		unlock()
		return backends.Source{}, 0, "", nil, err
	}
	return backends.Source{Volume: from}, vol.SizeBytes, bn, unlock, nil
}

// finishClone does what a clone's or a grown volume's next mount owes it
// (see metaNewUUIDKey): before the mount (mounted false) a new UUID and,
// where the filesystem can be grown unmounted (ext4), the grow; after it
// (mounted) the grow still owed (xfs). It returns the meta with the
// settled keys removed.
func (d *Core) finishClone(ctx context.Context, r record, meta map[string]string, mounted bool) (map[string]string, error) {
	if meta[metaNewUUIDKey] != "true" && meta[metaGrowKey] != "true" {
		return meta, nil
	}
	tools, err := d.tools()
	if err != nil {
		return meta, err
	}
	if !mounted {
		if meta[metaNewUUIDKey] == "true" {
			scratch := filepath.Join(d.cfg.MountDir, ".uuid-"+r.Name)
			if err := tools.NewUUID(ctx, r.Device, scratch); err != nil {
				return meta, err
			}
			meta = withoutKey(meta, metaNewUUIDKey)
		}
		if meta[metaGrowKey] == "true" {
			done, err := tools.GrowUnmounted(ctx, r.Device)
			if err != nil {
				return meta, err
			}
			if done {
				meta = withoutKey(meta, metaGrowKey)
			}
		}
		return meta, nil
	}
	if meta[metaGrowKey] == "true" {
		if err := tools.Grow(ctx, r.Device, r.Mountpoint); err != nil {
			return meta, err
		}
		meta = withoutKey(meta, metaGrowKey)
	}
	return meta, nil
}
