package volumes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/blockvol/blockvol/internal/quote"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/sentinel"
)

// Create makes a volume called name with the given raw options. Creating a
// name that exists already returns it unchanged (its stored options win):
// Docker asks Get first and calls Create only for a name it did not find.
func (d *Core) Create(ctx context.Context, name string, rawOpts map[string]string) (err error) {
	c := d.begin(ctx, "create", name, d.cfg.CreateTimeout)
	defer func() { c.end(err) }()
	ctx, log := c.ctx, c.log
	if err := ValidateName(name); err != nil {
		return err
	}
	opts, err := ParseOptions(rawOpts, d.cfg.Defaults, d.cfg.ParseMountOpts)
	if err != nil {
		log.Info("create refused", "err", err)
		return err
	}
	c.backend = opts.Backend
	unlock, err := d.lockVolume(ctx, name)
	if err != nil {
		return err
	}
	defer unlock()

	if bn, err := d.existing(ctx, log, name, opts.Backend); err != nil {
		return err
	} else if bn != "" {
		log.Info("volume exists already; options of this create ignored", "backend", bn)
		return nil
	}
	if opts.From != "" {
		bn, err := d.createClone(ctx, log, name, opts)
		if err != nil {
			return err
		}
		d.remember(name, bn)
		return nil
	}
	be := d.cfg.Backends[opts.Backend]
	_, err = be.Create(ctx, backends.CreateRequest{
		Name:             name,
		SizeBytes:        opts.SizeBytes,
		VolumeType:       opts.VolumeType,
		IOPS:             opts.IOPS,
		AvailabilityZone: opts.AvailabilityZone,
		Meta:             encodeMeta(opts),
	})
	switch {
	case errors.Is(err, sentinel.ErrExists):
		// Another host (shared backend) created it between our look-up
		// and our create: theirs is the volume.
		log.Info("volume created concurrently elsewhere; using it")
	case err != nil: // wraps the backend's class (sentinel.ErrInvalid, ...)
		return fmt.Errorf("volume %s cannot be created on backend %s: %w", quote.Short(name), opts.Backend, err)
	}
	d.remember(name, opts.Backend)
	log.Info("volume created", "backend", opts.Backend, "size_bytes", opts.SizeBytes, "fstype", opts.FSType)
	return nil
}

// existing returns the backend that already has a volume called name, or
// "". Only the backend that would create the volume must answer: another
// backend that cannot be reached is logged and passed over, so that one
// outage does not stop creates everywhere (the target backend still
// refuses a duplicate within itself).
func (d *Core) existing(ctx context.Context, log *slog.Logger, name, target string) (string, error) {
	for _, bn := range d.cfg.Defaults.Backends {
		_, err := d.cfg.Backends[bn].Get(ctx, name)
		switch {
		case err == nil:
			d.remember(name, bn)
			return bn, nil
		case errors.Is(err, sentinel.ErrNotFound):
		case bn == target:
			return "", fmt.Errorf("volume %s cannot be created: backend %s: %w", quote.Short(name), bn, err)
		default:
			log.Warn("backend not reachable; cannot tell whether it has a volume of this name", "backend", bn, "err", err)
		}
	}
	return "", nil
}

// Remove deletes a volume and its data. It refuses a volume that has users
// on this host; the backend refuses one attached anywhere.
func (d *Core) Remove(ctx context.Context, name string) error {
	return d.locked(ctx, "remove", name, d.cfg.OtherTimeout, nil, func(c *call) error {
		ctx, log := c.ctx, c.log
		if r, ok := d.recs.get(name); ok {
			if len(r.Users) > 0 {
				return &userError{kind: sentinel.ErrInUse, msg: fmt.Sprintf("volume %s is in use by %d mount(s) on this host; stop the containers using it (and unpublish and unstage its CSI targets) first", quote.Short(name), len(r.Users))}
			}
			// A teardown that failed earlier: finish it before removing.
			if err := d.teardown(ctx, log, r); err != nil {
				return fmt.Errorf("volume %s cannot be removed: %w", quote.Short(name), err)
			}
		}
		_, bn, err := d.lookup(ctx, name)
		if err != nil {
			return err
		}
		c.backend = bn
		if err := d.cfg.Backends[bn].Remove(ctx, name); err != nil {
			switch {
			case errors.Is(err, sentinel.ErrNotFound):
				// Gone already (removed concurrently elsewhere): done.
			default: // wraps the backend's class (sentinel.ErrInUse, ...)
				return fmt.Errorf("volume %s cannot be removed: %w", quote.Short(name), err)
			}
		}
		d.remember(name, "")
		d.takeMounted(name)
		d.damageMu.Lock()
		delete(d.damage, name)
		d.damageMu.Unlock()
		log.Info("volume removed", "backend", bn)
		return nil
	})
}
