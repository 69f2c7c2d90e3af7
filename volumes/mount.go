package volumes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"

	"github.com/blockvol/blockvol/internal/quote"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/fs"
	"github.com/blockvol/blockvol/internal/sentinel"
)

// Claim is one user's use of a volume on this host.
type Claim struct {
	Name string
	// User names the claim: a Docker mount ID, a CSI target path with its
	// door's prefix. Non-empty.
	User string
	// Block asks for the raw block device: attached, neither formatted nor
	// mounted. A volume in use one way refuses users of the other.
	Block bool
	// Preempt takes the volume over from another host that still has it
	// attached, as the volume's own preempt option does.
	Preempt bool
	// Then, when set, runs under the volume's lock once the volume is up,
	// with its mountpoint (its device, for Block): the door's own step
	// (a bind mount). When it fails the claim is undone and its error is
	// returned as it is.
	Then func(ctx context.Context, at string) error
}

// Use gives the volume to one more user (non-empty) and returns its
// mountpoint. The first user attaches, formats if blank, and mounts;
// later users join the existing mount. A repeated Use by the same user
// changes nothing.
func (d *Core) Use(ctx context.Context, name, user string) (string, error) {
	return d.Claim(ctx, Claim{Name: name, User: user})
}

// Claim is Use with the choices of Claim: it returns the mountpoint, or the
// device of a Block claim.
func (d *Core) Claim(ctx context.Context, cl Claim) (_ string, err error) {
	name, user := cl.Name, cl.User
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
	var vol backends.Volume
	var bn string
	if known {
		// Ask the backend first: a volume taken from this host is never
		// joined or attached again from its stale record (lost.go).
		if vol, bn, err = d.lookup(ctx, name); err == nil {
			if r, known, err = d.settleLost(ctx, log, r, vol.Attachment); err != nil {
				return "", err
			}
		} else if len(r.Users) == 0 {
			return "", err
		}
		// Otherwise the users still have the mount: they may join it.
	}
	if known && r.Block != cl.Block {
		if len(r.Users) > 0 {
			return "", &userError{kind: sentinel.ErrInUse, msg: fmt.Sprintf("volume %q is in use %s by %d user(s) on this host; it cannot be used %s at the same time", name, useKind(r.Block), len(r.Users), useKind(cl.Block))}
		}
		// A teardown that failed earlier: finish it before changing kind.
		if err := d.teardown(ctx, log, r); err != nil {
			return "", fmt.Errorf("volume %q: %w", name, err)
		}
		known = false
	}
	if known && r.Phase == phaseMounted {
		up, err := d.isUp(r)
		if err != nil {
			return "", fmt.Errorf("volume %s: %w", quote.Short(name), err)
		}
		if up {
			had := r.has(user)
			if !had {
				r.add(user)
				if err := d.recs.put(r); err != nil {
					return "", fmt.Errorf("volume %s: %w", quote.Short(name), err)
				}
			}
			if err := d.then(ctx, cl, r); err != nil {
				if !had {
					r.remove(user)
					if perr := d.recs.put(r); perr != nil {
						log.Error("undo: record not updated", "err", perr)
					}
				}
				return "", err
			}
			log.Info("volume in use by one more user", "users", len(r.Users))
			return r.at(), nil
		}
		log.Warn("volume was recorded as up but is not any more; bringing it up again", "mountpoint", r.Mountpoint, "device", r.Device)
	}

	if bn == "" {
		if vol, bn, err = d.lookup(ctx, name); err != nil {
			return "", err
		}
	}
	if !known {
		r = record{Name: name, Backend: bn, Mountpoint: d.mountpoint(name), Block: cl.Block}
		if cl.Block {
			r.Mountpoint = ""
		}
	}
	c.backend = r.Backend
	// Claim before any host change, so that a crash in the middle leaves a
	// record that recovery can tear down.
	r.add(user)
	r.Phase = phaseMounting
	if err := d.recs.put(r); err != nil {
		return "", fmt.Errorf("volume %s: %w", quote.Short(name), err)
	}
	r, err = d.bringUp(ctx, log, r, vol, cl.Preempt)
	if err == nil {
		if err := d.then(ctx, cl, r); err != nil {
			log.Error("the door's step failed; undoing", "err", err)
			d.undoMount(log, r, user)
			return "", err
		}
		log.Info("volume up", "device", r.Device, "mountpoint", r.Mountpoint, "users", len(r.Users))
		return r.at(), nil
	}
	log.Error("mount failed; undoing", "err", err)
	d.undoMount(log, r, user)
	return "", fmt.Errorf("volume %s cannot be mounted: %w", quote.Short(name), err)
}

func (d *Core) then(ctx context.Context, cl Claim, r record) error {
	if cl.Then == nil {
		return nil
	}
	return cl.Then(ctx, r.at())
}

// isUp reports whether r's volume is still what r says: mounted at its
// mountpoint, or (Block) its device still there.
func (d *Core) isUp(r record) (bool, error) {
	if r.Block {
		fi, err := os.Stat(r.Device)
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		return fi.Mode()&os.ModeDevice != 0, nil
	}
	dev, err := d.cfg.FS.MountedDevice(r.Mountpoint)
	return dev != "", err
}

func useKind(block bool) string {
	if block {
		return "as a raw block device"
	}
	return "as a filesystem"
}

// bringUp attaches, prepares and mounts r's volume and records it mounted.
// A Block record is attached only. preempt adds to the volume's own option.
func (d *Core) bringUp(ctx context.Context, log *slog.Logger, r record, vol backends.Volume, preempt bool) (record, error) {
	be, err := d.backend(r.Backend)
	if err != nil {
		return r, err
	}
	opts, err := decodeMeta(vol.Meta, d.defaults)
	if err != nil {
		return r, err
	}
	dev, err := be.Attach(ctx, r.Name, backends.AttachOptions{Preempt: opts.Preempt || preempt})
	if err != nil {
		return r, fmt.Errorf("attach: %w", err)
	}
	r.Device = dev
	log = log.With("device", dev)
	if r.Block {
		// The raw device is handed out: whatever its user writes on it is
		// data, never to be formatted by a later first mount.
		meta := vol.Meta
		for _, k := range []string{metaFreshKey, metaOverwritePendingKey, metaNewUUIDKey, metaGrowKey} {
			meta = withoutKey(meta, k)
		}
		if len(meta) != len(vol.Meta) {
			if err := be.SetMeta(ctx, r.Name, meta); err != nil {
				return r, fmt.Errorf("record the volume's first use: %w", err)
			}
		}
		r.Phase = phaseMounted
		return r, d.recs.put(r)
	}

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
	fsType, formatted, err := d.prepare(ctx, log, r, be, opts.FSType, fresh, pending)
	if err != nil && fresh && errors.Is(err, fs.ErrNeedsRepair) && ctx.Err() == nil {
		fsType, formatted, err = d.remakeFresh(ctx, log, r, opts, err)
	}
	if err != nil {
		return err
	}
	if formatted {
		log.Info("filesystem created", "fstype", fsType)
		meta = withoutKey(withoutKey(meta, metaNewUUIDKey), metaGrowKey)
	}
	owed := meta
	if meta, err = d.finishClone(ctx, r, meta, false); err != nil {
		return err
	}
	if err := d.cfg.FS.Mount(ctx, r.Device, r.Mountpoint, fsType, opts.MountOpts); err != nil {
		if !fresh || formatted || ctx.Err() != nil {
			return err
		}
		if fsType, formatted, err = d.remakeFresh(ctx, log, r, opts, err); err != nil {
			return err
		}
		if err := d.cfg.FS.Mount(ctx, r.Device, r.Mountpoint, fsType, opts.MountOpts); err != nil {
			return err
		}
	}
	if meta, err = d.finishClone(ctx, r, meta, true); err != nil {
		return err
	}
	if formatted || fresh {
		// A fresh volume is handed over empty: images such as postgres
		// refuse a data directory that holds lost+found (e2fsck makes it
		// again when it needs it). A volume never handed out whose first
		// use was interrupted after its mkfs (kill -9) is finished here
		// the same way; a lost+found that holds something is not ours to
		// remove.
		err := os.Remove(filepath.Join(r.Mountpoint, "lost+found"))
		switch {
		case err == nil, errors.Is(err, os.ErrNotExist):
		case !formatted && errors.Is(err, syscall.ENOTEMPTY):
			log.Warn("the fresh volume's lost+found is not empty; left as it is")
		default:
			return fmt.Errorf("empty the fresh filesystem: %w", err)
		}
	}
	if fresh || len(meta) != len(owed) {
		// Handed out from here on: never formatted again; what a clone or
		// a grown volume was owed is done.
		if err := be.SetMeta(ctx, r.Name, withoutKey(meta, metaFreshKey)); err != nil {
			return fmt.Errorf("record the volume's first use: %w", err)
		}
	}
	d.noteMounted(r.Name, mountedFS{fstype: fsType})
	return nil
}

// prepare is FS.Prepare, except that a fresh volume whose backend proves
// its device all zeros is formatted without the probe (one program run
// fewer on a first mount): a probe of zeros finds nothing to keep.
func (d *Core) prepare(ctx context.Context, log *slog.Logger, r record, be backends.Backend, fstype string, fresh, overwrite bool) (string, bool, error) {
	if !fresh && !overwrite {
		if found := d.reusable(ctx, log, r, be); found != "" {
			return found, false, nil
		}
	}
	if bp, ok := be.(backends.BlankProver); ok && fresh {
		blank, err := bp.ProvenBlank(ctx, r.Name, r.Device)
		if err != nil {
			log.Warn("cannot tell whether the fresh volume is blank; probing it", "err", err)
		}
		if blank {
			if err := d.cfg.FS.FormatBlank(ctx, r.Device, fstype); err != nil {
				return "", false, err
			}
			return fstype, true, nil
		}
	}
	return d.cfg.FS.Prepare(ctx, r.Device, fstype, overwrite)
}

// remakeFresh makes the filesystem of a fresh volume again after the ext4
// found on it failed its check (fs.ErrNeedsRepair) or the filesystem found
// failed to mount (cause). A volume never
// handed out holds nothing of a user's: an unusable ext4/xfs on it is what
// a first mkfs killed half-way (it dies with the plugin) left behind. A
// usable one is kept (prepareAndMount), and a foreign signature is still
// refused by Prepare.
func (d *Core) remakeFresh(ctx context.Context, log *slog.Logger, r record, opts Options, cause error) (string, bool, error) {
	log.Warn("the filesystem on a volume never handed out is unusable, as an interrupted first mkfs leaves it; making it again", "err", cause)
	fsType, formatted, err := d.cfg.FS.Prepare(ctx, r.Device, opts.FSType, true)
	if err != nil {
		return "", false, fmt.Errorf("%w; making it again failed too: %w", cause, err)
	}
	return fsType, formatted, nil
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
func (d *Core) Release(ctx context.Context, name, user string) error {
	return d.Unclaim(ctx, name, user, nil)
}

// Unclaim is Release with the door's own step: first, when set, runs under
// the volume's lock before the claim is dropped, whether or not user holds
// one (it must be idempotent: an unmount of the door's bind mount, say).
// When first fails the claim stays.
func (d *Core) Unclaim(ctx context.Context, name, user string, first func(ctx context.Context) error) error {
	return d.locked(ctx, "unmount", name, d.cfg.OtherTimeout, []any{"id", shortID(user)}, func(c *call) error {
		ctx, log := c.ctx, c.log
		if first != nil {
			if err := first(ctx); err != nil {
				return err
			}
		}

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
		if d.deferRelease(r) {
			log.Info("volume released; unmount deferred", "delay", d.cfg.ReleaseDelay)
			return nil
		}
		if err := d.teardown(ctx, log, r); err != nil {
			if d.lostNow(ctx, log, r) {
				// Not this host's to keep any more: its users are gone, and
				// the rest of the release is retried (Watch).
				log.Error("the lost volume's side on this host is not released yet; retried every few seconds and at its next operation or restart", "err", err)
				return nil
			}
			return fmt.Errorf("volume %s cannot be unmounted: %w", quote.Short(name), err)
		}
		log.Info("volume unmounted and detached")
		return nil
	})
}

// settleLost refuses a Mount of a volume that was taken from this host
// while its users still have it (r, under the volume's lock; att is the
// backend's claim now). A record without users left is finished first (its
// release failed before) and dropped: known is false then, and the Mount
// goes on as a first use.
func (d *Core) settleLost(ctx context.Context, log *slog.Logger, r record, att *backends.Attachment) (_ record, known bool, err error) {
	if !att.Lost() {
		return r, true, nil
	}
	if len(r.Users) > 0 {
		d.noteLost(log, r, att.Holder)
		return r, true, lostError(r.Name, att.Holder)
	}
	if err := d.teardown(ctx, log, r); err != nil {
		return r, true, fmt.Errorf("volume %s: this host's earlier use of it is not released yet: %w", quote.Short(r.Name), err)
	}
	return record{}, false, nil
}

// lostNow tells whether the volume of r (under its lock, its last user
// gone, its release failed) was taken from this host: known lost already,
// or so the backend says now. A backend that cannot be asked is taken as
// not. Only a failed release asks: a release that works needs no answer.
func (d *Core) lostNow(ctx context.Context, log *slog.Logger, r record) bool {
	d.lostMu.Lock()
	_, known := d.lost[r.Name]
	d.lostMu.Unlock()
	if known {
		return true
	}
	vol, _, err := d.lookup(ctx, r.Name)
	if err != nil {
		return false
	}
	if !vol.Attachment.Lost() {
		return false
	}
	d.noteLost(log, r, vol.Attachment.Holder)
	return true
}

// teardown unmounts and detaches r's volume and drops its record. Each
// step is idempotent, so a teardown interrupted by a crash or an error is
// finished by running it again.
func (d *Core) teardown(ctx context.Context, log *slog.Logger, r record) error {
	clean := d.takeMounted(r.Name)
	if r.Mountpoint != "" {
		if err := d.cfg.FS.Unmount(ctx, r.Mountpoint); err != nil {
			return fmt.Errorf("unmount %s: %w", r.Mountpoint, err)
		}
		if err := os.Remove(r.Mountpoint); err != nil && !errors.Is(err, os.ErrNotExist) {
			log.Warn("mountpoint directory not removed", "err", err)
		}
	}
	be, err := d.backend(r.Backend)
	if err != nil {
		return err
	}
	if err := be.Detach(ctx, r.Name); err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	if err := d.recs.del(r.Name); err != nil {
		return err
	}
	d.forgetLost(r.Name)
	if r.Mountpoint != "" && clean.fstype != "" {
		d.noteMounted(r.Name, mountedFS{fstype: clean.fstype, clean: true})
	}
	return nil
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
