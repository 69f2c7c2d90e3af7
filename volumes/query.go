package volumes

import (
	"context"
	"errors"
	"sort"
	"time"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/quote"
	"github.com/blockvol/blockvol/internal/sentinel"
)

// Info describes one volume: the backend's facts and this host's use.
type Info struct {
	Name    string
	Backend string
	// SizeBytes and CreatedAt are zero when the backend could not be asked.
	SizeBytes int64
	CreatedAt time.Time
	// Options are the stored create options (the defaults for a volume
	// blockvol did not create); OptionsKnown is false when they could not
	// be read (unreadable, or the backend could not be asked).
	Options      Options
	OptionsKnown bool
	// Status holds backend facts (backends.Volume.Status).
	Status map[string]any
	// Annotations are those set with Annotate.
	Annotations map[string]string
	// Local is this host's use of the volume; nil when it has none.
	Local *Local
	// Unreachable is set when the backend could not be asked and the
	// answer comes from what this host knows.
	Unreachable error
	// Damage, when set, says that this host's record of the volume was
	// damaged and set aside at start-up.
	Damage string
}

// Local is this host's use of a volume, as its record says.
type Local struct {
	Phase      string // mounting, mounted or unmounting
	Users      int
	Block      bool // in use as a raw block device
	Device     string
	Mountpoint string // where the volume is (or is being) mounted
	// Lost: the backend's claim no longer names this host although the
	// volume is mounted here — another host took it over (preempt) and
	// fenced this one off; the mount here is stale (see lost.go). HeldBy
	// names the host the claim names now ("" for none).
	Lost   bool
	HeldBy string

	seq uint64 // the record's, when this was read
}

// MountedAt is the mountpoint while the volume is mounted (and not lost),
// "" otherwise.
func (l *Local) MountedAt() string {
	if l == nil || l.Phase != phaseMounted || l.Lost {
		return ""
	}
	return l.Mountpoint
}

func localOf(r record) *Local {
	return &Local{Phase: r.Phase, Users: len(r.Users), Device: r.Device, Mountpoint: r.Mountpoint, Block: r.Block, seq: r.seq}
}

// Get describes one volume. Queries take no volume lock: Docker calls Get
// right before Mount and must not wait behind another container's slow
// mount of the same volume.
//
// Docker forgets a volume whose Get fails (it calls Get for every volume it
// knows when it restarts), so a backend that cannot be reached is answered
// from what this host knows — its record of a volume in use, or a volume
// seen since the process started — with the failure in Unreachable, rather
// than with an error.
func (d *Core) Get(ctx context.Context, name string) (info Info, err error) {
	c := d.begin(ctx, "get", name, d.cfg.OtherTimeout)
	defer func() {
		if err == nil {
			info.Damage = d.damaged(name)
		}
		c.end(err)
	}()
	ctx, log := c.ctx, c.log
	if err := ValidateName(name); err != nil {
		return Info{}, err
	}
	before, _ := d.recs.get(name)
	vol, bn, err := d.lookup(ctx, name)
	c.backend = bn
	r, mounted := d.recs.get(name)
	if err != nil {
		if errors.Is(err, sentinel.ErrNotFound) && !mounted {
			return Info{}, err
		}
		if mounted {
			// An outage, or a volume gone from its backend (an image
			// deleted by hand) while this host still has it in use.
			log.Warn("backend cannot describe a volume in use here; answering from this host's record", "err", err)
			return Info{Name: name, Backend: r.Backend, Local: localOf(r), Unreachable: err}, nil
		}
		if bn := d.knownBackend(name); bn != "" {
			log.Warn("backend unreachable; answering with the volume as last seen", "err", err)
			return Info{Name: name, Backend: bn, Unreachable: err}, nil
		}
		return Info{}, err
	}
	info = Info{Name: vol.Name, Backend: bn, SizeBytes: vol.SizeBytes, CreatedAt: vol.CreatedAt, Status: vol.Status, Annotations: annotations(vol.Meta)}
	if opts, err := decodeMeta(vol.Meta, d.defaults); err == nil {
		info.Options, info.OptionsKnown = opts, true
	}
	if mounted {
		info.Local = localOf(r)
		d.markLost(log, name, before.seq, info.Local, vol.Attachment)
	}
	return info, nil
}

// List returns the volumes of every backend, sorted by name, with this
// host's use of each. Options are not decoded (OptionsKnown is false). A
// backend that fails is left out (and logged) so that one outage does not
// hide the others' volumes; only when every backend fails is it an error.
func (d *Core) List(ctx context.Context) (_ []Info, err error) {
	c := d.begin(ctx, "list", "", d.cfg.OtherTimeout)
	defer func() { c.end(err) }()
	ctx, log := c.ctx, c.log
	locals := d.recs.locals()
	out := []Info{}
	var failures []error
	var changed uint64 // the latest generation of the seen set that List changed
	for _, bn := range d.cfg.Defaults.Backends {
		vols, err := d.cfg.Backends[bn].List(ctx)
		if err != nil {
			log.Error("backend list failed", "backend", bn, "err", err)
			failures = append(failures, err)
			continue
		}
		for _, v := range vols {
			changed = max(changed, d.seen.set(v.Name, bn))
			l := locals[v.Name]
			if l != nil {
				d.markLost(log.With("volume", quote.Prefix(v.Name)), v.Name, l.seq, l, v.Attachment)
			}
			out = append(out, Info{Name: v.Name, Backend: bn, SizeBytes: v.SizeBytes, CreatedAt: v.CreatedAt, Status: v.Status, Local: l})
		}
	}
	if changed != 0 {
		d.seen.save(changed) // once, however many volumes were new
	}
	if len(failures) == len(d.cfg.Backends) {
		return nil, errors.Join(failures...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Path returns the mountpoint of a volume mounted on this host, "" when it
// is not mounted (an error wrapping sentinel.ErrNotFound when it does not exist).
func (d *Core) Path(ctx context.Context, name string) (_ string, err error) {
	c := d.begin(ctx, "path", name, d.cfg.OtherTimeout)
	defer func() { c.end(err) }()
	ctx = c.ctx
	if err := ValidateName(name); err != nil {
		return "", err
	}
	if r, ok := d.recs.get(name); ok {
		return localOf(r).MountedAt(), nil
	}
	if _, _, err := d.lookup(ctx, name); err != nil {
		return "", err
	}
	return "", nil
}

// Capacity is the free capacity of backend (the default backend for ""),
// when it can tell (backends.CapacityReporter); known is false otherwise.
func (d *Core) Capacity(ctx context.Context, backend string) (bytes int64, known bool, err error) {
	if backend == "" {
		backend = d.cfg.Defaults.Backend
	}
	be, err := d.backend(backend)
	if err != nil {
		return 0, false, &userError{kind: sentinel.ErrInvalid, msg: err.Error()}
	}
	cr, ok := be.(backends.CapacityReporter)
	if !ok {
		return 0, false, nil
	}
	n, err := cr.AvailableBytes(ctx)
	return n, err == nil, err
}

// DefaultBackend is the backend a create without the backend option uses.
func (d *Core) DefaultBackend() string { return d.cfg.Defaults.Backend }

// BackendScope is the scope (backends.ScopeLocal or ScopeGlobal) of a
// configured backend, "" for an unknown one.
func (d *Core) BackendScope(backend string) string {
	be, ok := d.cfg.Backends[backend]
	if !ok {
		return ""
	}
	return be.Scope()
}

// DefaultOptions are the options of a create that gives none.
func (d *Core) DefaultOptions() Options { return d.defaults }

// Zones maps each backend with availability zones (backends.Zoner) to the
// zone this host uses it in.
func (d *Core) Zones() map[string]string {
	out := map[string]string{}
	for bn, be := range d.cfg.Backends {
		if z, ok := be.(backends.Zoner); ok && z.Zone() != "" {
			out[bn] = z.Zone()
		}
	}
	return out
}
