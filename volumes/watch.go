package volumes

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/quote"
)

// Watch runs until ctx ends. Every interval, while this host has volumes
// mounted on backends that reconcile (backends.Reconciler), it has each
// such backend check them and re-create what their attachment lacks on
// the shared side (a target tgtd forgot in a restart), so that their I/O
// resumes within seconds rather than at their next Mount. A volume the
// backend reports taken by another host is marked lost (lost.go) and not
// checked again; nothing is ever claimed back. Without such volumes a
// tick asks no backend anything.
func (d *Core) Watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	w := watcher{d: d, failed: map[string]string{}}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.tick(ctx)
		}
	}
}

// watcher is Watch's state: the failures already logged, so that a
// target host that stays down is reported when that changes, not at every
// tick.
type watcher struct {
	d      *Core
	failed map[string]string // volume or "backend <name>" → the error logged
}

// watched returns, per backend that reconciles, the volumes to check:
// mounted here for users, and not lost; with their records' seq.
func (d *Core) watched() (map[string][]string, map[string]uint64) {
	d.lostMu.Lock()
	lost := maps.Clone(d.lost)
	d.lostMu.Unlock()
	names := map[string][]string{}
	seqs := map[string]uint64{}
	d.recs.mu.RLock()
	defer d.recs.mu.RUnlock()
	for n, r := range d.recs.m {
		if r.Phase != phaseMounted || len(r.Users) == 0 {
			continue
		}
		if _, ok := lost[n]; ok {
			continue
		}
		if _, ok := d.cfg.Backends[r.Backend].(backends.Reconciler); ok {
			names[r.Backend] = append(names[r.Backend], n)
			seqs[n] = r.seq
		}
	}
	return names, seqs
}

func (w *watcher) tick(ctx context.Context) {
	d := w.d
	for _, name := range d.lostReleases() {
		w.release(ctx, name)
	}
	byBackend, seqs := d.watched()
	for _, bn := range slices.Sorted(maps.Keys(byBackend)) {
		names := byBackend[bn]
		slices.Sort(names)
		log := d.log.With("op", "watch", "backend", bn)
		cctx, cancel := context.WithTimeout(ctx, d.cfg.OtherTimeout)
		res, err := d.cfg.Backends[bn].(backends.Reconciler).Reconcile(cctx, names)
		cancel()
		w.report(log, "backend "+bn, err)
		if err != nil {
			continue
		}
		for _, n := range names {
			vlog := log.With("volume", quote.Prefix(n))
			w.report(vlog, n, res.Failed[n])
			if what, ok := res.Repaired[n]; ok {
				vlog.Warn("the volume's attachment lacked something on the shared side; re-created from the backend's records", "repaired", what)
			}
			if holder, ok := res.Lost[n]; ok {
				d.markLost(vlog, n, seqs[n], nil, &backends.Attachment{Holder: holder})
			}
		}
	}
	for k := range w.failed {
		_, vol := seqs[k]
		_, be := byBackend[strings.TrimPrefix(k, "backend ")]
		_, rel := d.recs.get(strings.TrimPrefix(k, "release "))
		if !vol && !be && !rel {
			delete(w.failed, k) // no longer watched
		}
	}
}

// report logs err for key when it differs from the last one logged, and
// the recovery when it is gone.
func (w *watcher) report(log *slog.Logger, key string, err error) {
	old, had := w.failed[key]
	switch {
	case err == nil && had:
		delete(w.failed, key)
		log.Info("the volume watch works again")
	case err != nil && old != err.Error():
		w.failed[key] = err.Error()
		log.Warn("the volume watch failed; it retries at every tick", "step", key, "err", err)
	}
}

// lostReleases returns the lost volumes whose users have all unmounted
// but whose release on this host could not be finished (an unmount that
// failed while a process still had a file open on the stale mount).
func (d *Core) lostReleases() []string {
	d.lostMu.Lock()
	lost := slices.Sorted(maps.Keys(d.lost))
	d.lostMu.Unlock()
	var out []string
	for _, n := range lost {
		if r, ok := d.recs.get(n); ok && len(r.Users) == 0 && r.Phase == phaseUnmounting {
			out = append(out, n)
		}
	}
	return out
}

// releaseLockWait bounds Watch's wait for the lock of a volume it
// releases: an operation under way will finish the release itself.
const releaseLockWait = time.Second

// release finishes the release of a lost volume (lostReleases) under its
// lock, so that this host's side goes as soon as the last process holding
// the stale mount has gone, rather than at the volume's next operation.
func (w *watcher) release(ctx context.Context, name string) {
	d := w.d
	log := d.log.With("op", "watch", "volume", quote.Prefix(name))
	lctx, cancel := context.WithTimeout(ctx, releaseLockWait)
	unlock, err := d.lockVolume(lctx, name)
	cancel()
	if err != nil {
		return
	}
	defer unlock()
	r, ok := d.recs.get(name)
	if !ok || len(r.Users) > 0 || r.Phase != phaseUnmounting {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, d.cfg.OtherTimeout)
	defer cancel()
	err = d.teardown(cctx, log, r)
	w.report(log, "release "+name, err)
	if err == nil {
		log.Info("the lost volume's side on this host is released (unmounted, detached)")
	}
}
