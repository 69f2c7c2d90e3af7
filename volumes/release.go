package volumes

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/quote"
)

// A deferred release (Config.ReleaseDelay) keeps a volume of a local-scope
// backend mounted for a moment after its last user left, so that a use
// right after joins the mount instead of unmounting, detaching, attaching,
// probing, checking and mounting again: Docker unmounts a volume after
// copying the image's files into it and mounts it again at once for the
// container.
//
// No state of its own: the record says "phase unmounting, no users", the
// teardown a crash or a failed unmount leaves owed, which every path
// already finishes or reuses — Claim (bringUp finds the volume still
// attached and mounted and reuses the mount), Remove (tears it down
// first), Recover (tears it down at start). The timer only finishes it
// later if nothing else did; Wait finishes every pending one at once, so a
// stopped plugin leaves nothing mounted.

// deferRelease schedules the teardown of r, just recorded as unmounting
// with no users, after Config.ReleaseDelay, and reports whether it did:
// not for a raw block use, a global-scope backend (another host may want
// it next) or a zero delay.
func (d *Core) deferRelease(r record) bool {
	if d.cfg.ReleaseDelay <= 0 || r.Block {
		return false
	}
	be, err := d.backend(r.Backend)
	if err != nil || be.Scope() != backends.ScopeLocal {
		return false
	}
	d.pendMu.Lock()
	defer d.pendMu.Unlock()
	if d.pending == nil {
		d.pending = map[string]*time.Timer{}
	}
	if old, ok := d.pending[r.Name]; ok && old.Stop() {
		d.inflight.Done() // its finishRelease will not run
	}
	d.inflight.Add(1)
	var t *time.Timer
	t = time.AfterFunc(d.cfg.ReleaseDelay, func() {
		d.pendMu.Lock() // t is set under it
		self := t
		d.pendMu.Unlock()
		d.finishRelease(r.Name, self)
	})
	d.pending[r.Name] = t
	return true
}

// finishRelease tears down name's volume if it is still released (no
// users, unmounting) under its lock. t is the timer that ran it (nil when
// Wait did).
func (d *Core) finishRelease(name string, t *time.Timer) {
	defer d.inflight.Done()
	d.pendMu.Lock()
	if cur, ok := d.pending[name]; ok && (t == nil || cur == t) {
		delete(d.pending, name)
	}
	d.pendMu.Unlock()
	log := d.log.With("op", "release", "volume", quote.Prefix(name))
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.OtherTimeout)
	defer cancel()
	unlock, err := d.lockVolume(ctx, name)
	if err != nil {
		log.Error("deferred unmount not done; it will be finished at the next operation on the volume or restart", "err", err)
		return
	}
	defer unlock()
	r, ok := d.recs.get(name)
	if !ok || len(r.Users) > 0 || r.Phase != phaseUnmounting {
		return // used again, removed or finished meanwhile
	}
	if err := d.teardown(ctx, log, r); err != nil {
		log.Error("deferred unmount failed; it will be retried at the next operation on the volume or restart", "err", err)
		return
	}
	log.Info("volume unmounted and detached")
}

// settle finishes the teardown owed on volume (a deferred release, or one
// that failed) before an operation that needs it at rest or mounted by its
// own path: a snapshot or clone copies it (a mounted but unfrozen ext4 may
// hold unwritten metadata), a grow leaves the filesystem to the next mount
// (which must not join a stale one). The caller holds the volume's lock.
func (d *Core) settle(ctx context.Context, log *slog.Logger, volume string) error {
	r, ok := d.recs.get(volume)
	if !ok || len(r.Users) > 0 || r.Phase != phaseUnmounting {
		return nil
	}
	if err := d.teardown(ctx, log, r); err != nil {
		return fmt.Errorf("volume %s: finishing its last unmount: %w", quote.Short(volume), err)
	}
	return nil
}

// finishReleases runs every pending deferred release now.
func (d *Core) finishReleases() {
	d.pendMu.Lock()
	defer d.pendMu.Unlock()
	for name, t := range d.pending {
		if t.Stop() {
			delete(d.pending, name)
			go d.finishRelease(name, nil)
		}
	}
}
