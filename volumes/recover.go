package volumes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"github.com/blockvol/blockvol/internal/quote"

	"github.com/blockvol/blockvol/backends"
)

// Recover reconciles the records left by an earlier run with what the host
// really has, before the front doors serve:
//   - mounted, with users, and the mount (a Block volume: its device) is
//     there: kept; the containers go on, and their Unmounts will work;
//     claims a door's ClaimCheck reports dead are dropped first, and a
//     volume left with none is torn down;
//   - mounted, with users, but the mount is gone (the host rebooted): the
//     users are stale; the volume is detached and the record dropped;
//   - unless its device is still attached here and in use: mounted in a
//     mount namespace this process does not see (a managed plugin that
//     Docker restarted under containers still running on the volume has a
//     new one). Then the users are live and the record is kept; a later
//     use mounts the same device here again (fs.Prepare leaves a device in
//     use as it is), and the last release detaches it;
//   - mounting (a crash in the middle of a use, whose caller got no
//     answer and will send no release) or unmounting: torn down.
//
// Then the host is trusted over the records: a volume that a backend
// reports attached to this host (backends.HostAttachments) but that has no
// record was attached by an operation killed before its record was
// written, or after it was dropped; it is detached, unless something is
// mounted at its mountpoint (then it is left as it is, and logged).
//
// A volume whose teardown fails keeps its record and is retried at its next
// operation; Recover reports all such failures together.
func (d *Core) Recover(ctx context.Context) error {
	var errs []error
	for _, name := range d.recordNames() {
		r, ok := d.recs.get(name)
		if !ok {
			continue
		}
		log := d.log.With("op", "recover", "volume", name, "phase", r.Phase, "users", len(r.Users))
		r = d.thawLeftover(ctx, log, r)
		if r.Phase == phaseMounted && len(r.Users) > 0 {
			kept, err := d.recoverUsers(ctx, log, r)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if kept {
				continue
			}
		} else {
			log.Warn("finishing an operation interrupted by a restart")
		}
		r.Users = nil
		r.Phase = phaseUnmounting
		if err := d.recs.put(r); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := d.teardown(ctx, log, r); err != nil {
			log.Error("recovery teardown failed; will retry at the next operation", "err", err)
			errs = append(errs, err)
			continue
		}
		log.Info("volume unmounted and detached")
	}
	errs = append(errs, d.detachUnrecorded(ctx))
	return errors.Join(errs...)
}

// detachUnrecorded detaches the volumes attached to this host that have no
// record; see Recover.
func (d *Core) detachUnrecorded(ctx context.Context) error {
	var errs []error
	for _, bn := range d.cfg.Defaults.Backends {
		ha, ok := d.cfg.Backends[bn].(backends.HostAttachments)
		if !ok {
			continue
		}
		names, err := ha.AttachedHere(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("backend %s: %w", bn, err))
			continue
		}
		for _, name := range names {
			if _, ok := d.recs.get(name); ok {
				continue
			}
			log := d.log.With("op", "recover", "volume", name, "backend", bn)
			dev, err := d.cfg.FS.MountedDevice(d.mountpoint(name))
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if dev != "" {
				log.Warn("volume attached and mounted without a record; leaving it as it is", "device", dev, "mountpoint", d.mountpoint(name))
				continue
			}
			log.Warn("volume attached without a record (an operation killed mid-way); detaching it")
			if err := d.cfg.Backends[bn].Detach(ctx, name); err != nil {
				errs = append(errs, fmt.Errorf("volume %s: detach: %w", quote.Short(name), err))
			}
		}
	}
	return errors.Join(errs...)
}

// recoverUsers decides the fate of a volume that was up with users: kept
// (true) when it is still up and some claim is still held, its dead claims
// dropped; false when it must be torn down.
func (d *Core) recoverUsers(ctx context.Context, log *slog.Logger, r record) (bool, error) {
	up, err := d.isUp(r)
	if err != nil {
		return false, err
	}
	if !up {
		elsewhere, err := d.inUseElsewhere(ctx, r)
		if err != nil {
			return false, err
		}
		if elsewhere {
			log.Warn("volume's mount is not in this mount namespace, but its device is still attached and in use (containers that outlived a restart of the plugin); keeping it for its users",
				"device", r.Device, "users", len(r.Users))
			return true, nil
		}
		log.Warn("volume was up before but is not any more (reboot?); releasing its stale users")
		return false, nil
	}
	live, err := d.liveClaims(r)
	if err != nil {
		return false, err
	}
	if len(live) == 0 {
		log.Warn("no claim of the volume survived the restart; releasing it")
		return false, nil
	}
	if len(live) < len(r.Users) {
		log.Warn("dropping claims that did not survive the restart", "dropped", len(r.Users)-len(live))
		r.Users = live
		if err := d.recs.put(r); err != nil {
			return false, err
		}
	}
	log.Info("volume still up; keeping it for its users", "device", r.Device, "users", len(live))
	return true, nil
}

// inUseElsewhere reports whether r's filesystem, not mounted in this mount
// namespace, is still mounted from its device in another: the backend
// reports the volume attached here (only a backend that can tell,
// HostAttachments: after a reboot a device path may name another volume)
// and something holds the device.
func (d *Core) inUseElsewhere(ctx context.Context, r record) (bool, error) {
	ha, ok := d.cfg.Backends[r.Backend].(backends.HostAttachments)
	if !ok || r.Block || r.Device == "" {
		return false, nil
	}
	names, err := ha.AttachedHere(ctx)
	if err != nil {
		return false, err
	}
	if !slices.Contains(names, r.Name) {
		return false, nil
	}
	return d.cfg.FS.InUse(r.Device)
}

func (d *Core) recordNames() []string {
	d.recs.mu.RLock()
	defer d.recs.mu.RUnlock()
	names := make([]string, 0, len(d.recs.m))
	for n := range d.recs.m {
		names = append(names, n)
	}
	return names
}
