package volumes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/blockvol/blockvol/internal/quote"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/fs"
)

// Use gives the volume to one more user (a claim, non-empty) and returns
// its mountpoint. The first user attaches, formats if blank, and mounts;
// later users join the existing mount. A repeated Use by the same user
// changes nothing.
func (d *Core) Use(ctx context.Context, name, user string) (_ string, err error) {
	c := d.begin(ctx, "mount", name, d.cfg.MountTimeout, "id", shortID(user))
	defer func() { c.end(err) }()
	ctx, log := c.ctx, c.log
	if user == "" {
		return "", invalidf("volume %s: a use needs a user", quote.Short(name))
	}
	unlock, err := d.acquire(ctx, name)
	if err != nil {
		return "", err
	}
	defer unlock()

	r, known := d.recs.get(name)
	c.backend = r.Backend
	if known && r.Phase == phaseMounted {
		dev, err := d.cfg.FS.MountedDevice(r.Mountpoint)
		if err != nil {
			return "", fmt.Errorf("volume %s: %w", quote.Short(name), err)
		}
		if dev != "" {
			if !r.has(user) {
				r.add(user)
				if err := d.recs.put(r); err != nil {
					return "", fmt.Errorf("volume %s: %w", quote.Short(name), err)
				}
			}
			log.Info("volume mounted for one more user", "users", len(r.Users))
			return r.Mountpoint, nil
		}
		log.Warn("volume was recorded as mounted but its mount is gone; mounting it again", "mountpoint", r.Mountpoint)
	}

	vol, bn, err := d.lookup(ctx, name)
	if err != nil {
		return "", err
	}
	if !known {
		r = record{Name: name, Backend: bn, Mountpoint: d.mountpoint(name)}
	}
	c.backend = r.Backend
	// Claim before any host change, so that a crash in the middle leaves a
	// record that recovery can tear down.
	r.add(user)
	r.Phase = phaseMounting
	if err := d.recs.put(r); err != nil {
		return "", fmt.Errorf("volume %s: %w", quote.Short(name), err)
	}
	r, err = d.bringUp(ctx, log, r, vol)
	if err == nil {
		log.Info("volume mounted", "device", r.Device, "mountpoint", r.Mountpoint, "users", len(r.Users))
		return r.Mountpoint, nil
	}
	log.Error("mount failed; undoing", "err", err)
	d.undoMount(log, r, user)
	return "", fmt.Errorf("volume %s cannot be mounted: %w", quote.Short(name), err)
}

// bringUp attaches, prepares and mounts r's volume and records it mounted.
func (d *Core) bringUp(ctx context.Context, log *slog.Logger, r record, vol backends.Volume) (record, error) {
	be, err := d.backend(r.Backend)
	if err != nil {
		return r, err
	}
	opts, err := decodeMeta(vol.Meta, d.defaults)
	if err != nil {
		return r, err
	}
	dev, err := be.Attach(ctx, r.Name, backends.AttachOptions{Preempt: opts.Preempt})
	if err != nil {
		return r, fmt.Errorf("attach: %w", err)
	}
	r.Device = dev
	log = log.With("device", dev)

	current, err := d.cfg.FS.MountedDevice(r.Mountpoint)
	if err != nil {
		return r, err
	}
	switch {
	case current == "":
		if err := d.prepareAndMount(ctx, log, r, vol, opts, be); err != nil {
			return r, err
		}
	case fs.SameDevice(current, dev):
		log.Info("volume already mounted; reusing the mount")
	default:
		return r, fmt.Errorf("%s is already mounted at %s, not %s; unmount it by hand", current, r.Mountpoint, dev)
	}
	r.Phase = phaseMounted
	if err := d.recs.put(r); err != nil {
		return r, err
	}
	return r, nil
}

func (d *Core) prepareAndMount(ctx context.Context, log *slog.Logger, r record, vol backends.Volume, opts Options, be backends.Backend) error {
	meta := vol.Meta
	pending := meta[metaOverwritePendingKey] == "true"
	if pending {
		// Clear the request before acting on it: a crash after this point
		// loses the wipe rather than wiping a second time later.
		meta = withoutKey(meta, metaOverwritePendingKey)
		if err := be.SetMeta(ctx, r.Name, meta); err != nil {
			return fmt.Errorf("clear overwritefs request: %w", err)
		}
		log.Warn("overwritefs=true: an existing ext4/xfs filesystem on the volume will be wiped (first mount after create only)")
	}
	fresh := meta[metaFreshKey] == "true"
	if fresh && !pending {
		log.Info("first use of a fresh volume: a filesystem found on it is debris of an interrupted first use and is made again")
	}
	fsType, formatted, err := d.cfg.FS.Prepare(ctx, r.Device, opts.FSType, pending || fresh)
	if err != nil {
		return err
	}
	if formatted {
		log.Info("filesystem created", "fstype", fsType)
	}
	if err := d.cfg.FS.Mount(ctx, r.Device, r.Mountpoint, fsType, opts.MountOpts); err != nil {
		return err
	}
	if formatted {
		// A fresh volume is handed over empty: images such as postgres
		// refuse a data directory that holds lost+found (e2fsck makes it
		// again when it needs it).
		if err := os.Remove(filepath.Join(r.Mountpoint, "lost+found")); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("empty the fresh filesystem: %w", err)
		}
	}
	if fresh {
		// Handed out from here on: never formatted again.
		if err := be.SetMeta(ctx, r.Name, withoutKey(meta, metaFreshKey)); err != nil {
			return fmt.Errorf("record the volume's first use: %w", err)
		}
	}
	return nil
}

// withoutKey returns a copy of m without key.
func withoutKey(m map[string]string, key string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		if k != key {
			out[k] = v
		}
	}
	return out
}

// undoMount rolls back a failed use for user: with no other user left the
// volume is unmounted and detached and its record dropped.
func (d *Core) undoMount(log *slog.Logger, r record, user string) {
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.UndoTimeout)
	defer cancel()
	r.remove(user)
	if len(r.Users) > 0 {
		r.Phase = phaseMounting // the others' mount is not ours to trust
		if err := d.recs.put(r); err != nil {
			log.Error("undo: record not updated", "err", err)
		}
		return
	}
	r.Phase = phaseUnmounting
	if err := d.recs.put(r); err != nil {
		log.Error("undo: record not updated", "err", err)
	}
	if err := d.teardown(ctx, log, r); err != nil {
		log.Error("undo incomplete; it will be retried at the next operation on the volume or restart", "err", err)
	}
}

// Release ends one user's use; the last user's release unmounts and
// detaches the volume.
func (d *Core) Release(ctx context.Context, name, user string) (err error) {
	c := d.begin(ctx, "unmount", name, d.cfg.OtherTimeout, "id", shortID(user))
	defer func() { c.end(err) }()
	ctx, log := c.ctx, c.log
	unlock, err := d.acquire(ctx, name)
	if err != nil {
		return err
	}
	defer unlock()

	r, ok := d.recs.get(name)
	c.backend = r.Backend
	if !ok {
		log.Info("volume is not mounted on this host; nothing to unmount")
		return nil
	}
	if !r.has(user) {
		if len(r.Users) == 0 {
			// A teardown failed before: finish it now.
			return d.teardown(ctx, log, r)
		}
		log.Warn("unmount for a user that has no mount; the volume stays mounted for its users", "users", len(r.Users))
		return nil
	}
	r.remove(user)
	if len(r.Users) > 0 {
		if err := d.recs.put(r); err != nil {
			return fmt.Errorf("volume %s: %w", quote.Short(name), err)
		}
		log.Info("volume released by one user; still mounted", "users", len(r.Users))
		return nil
	}
	r.Phase = phaseUnmounting
	if err := d.recs.put(r); err != nil {
		return fmt.Errorf("volume %s: %w", quote.Short(name), err)
	}
	if err := d.teardown(ctx, log, r); err != nil {
		return fmt.Errorf("volume %s cannot be unmounted: %w", quote.Short(name), err)
	}
	log.Info("volume unmounted and detached")
	return nil
}

// teardown unmounts and detaches r's volume and drops its record. Each
// step is idempotent, so a teardown interrupted by a crash or an error is
// finished by running it again.
func (d *Core) teardown(ctx context.Context, log *slog.Logger, r record) error {
	if err := d.cfg.FS.Unmount(ctx, r.Mountpoint); err != nil {
		return fmt.Errorf("unmount %s: %w", r.Mountpoint, err)
	}
	if err := os.Remove(r.Mountpoint); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn("mountpoint directory not removed", "err", err)
	}
	be, err := d.backend(r.Backend)
	if err != nil {
		return err
	}
	if err := be.Detach(ctx, r.Name); err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	return d.recs.del(r.Name)
}

func (d *Core) backend(name string) (backends.Backend, error) {
	be, ok := d.cfg.Backends[name]
	if !ok {
		return nil, fmt.Errorf("backend %q is no longer configured on this host", name)
	}
	return be, nil
}

// shortID shortens users (Docker's 64-hex mount IDs, say) for logs.
func shortID(id string) string {
	if id == "" {
		return "(none)"
	}
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
