// Package volumes is blockvol's protocol-free core: it creates and removes
// volumes on the backends (which provide and attach block devices), and
// brings them up and down on this host with the fs package (which formats
// and mounts them), for the front doors above it (the Docker VolumeDriver
// adapter in plugin/, the CSI services in csi/). It knows neither door.
//
// Contract:
//   - Create takes the raw create options; they are parsed against a
//     whitelist and stored with the volume, because a later use never
//     carries them.
//   - Uses are counted by user (a claim: a Docker mount ID, a CSI target):
//     the volume is mounted at the first and unmounted and detached at the
//     last. A repeated use by one user is one use.
//   - A failed use undoes its own work: no release follows it.
//   - Every operation on one volume is serialized; different volumes run in
//     parallel. Every slow path runs under the caller's context and the
//     operation's own deadline.
//   - Every change of this host's use of a volume is recorded crash-safely
//     before it is made, so Recover can finish or undo it after kill -9.
package volumes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/blockvol/blockvol/internal/quote"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/keyedlock"
	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/state"
)

// Filesystem is what the core needs of the fs package.
type Filesystem interface {
	// Prepare makes sure dev holds a mountable filesystem, formatting a
	// blank device (or, with overwrite, an ext4/xfs one) as fstype, and
	// refusing any other signature. It returns the type found or made.
	Prepare(ctx context.Context, dev, fstype string, overwrite bool) (fsType string, formatted bool, err error)
	// FormatBlank makes fstype on dev, proven to hold only zeros, without
	// the probe Prepare would make.
	FormatBlank(ctx context.Context, dev, fstype string) error
	// Mount mounts dev at target (creating target), nosuid and nodev.
	Mount(ctx context.Context, dev, target, fstype string, opts []string) error
	// Unmount unmounts target; not mounted is success.
	Unmount(ctx context.Context, target string) error
	// MountedDevice returns the source mounted at target, "" for none.
	MountedDevice(target string) (string, error)
	// InUse reports whether another holds block device dev: mounted in
	// some mount namespace, not necessarily this one.
	InUse(dev string) (bool, error)
	// Clean reports, from its superblock alone, whether dev holds a
	// filesystem of type fstype that needs no check before a mount.
	Clean(dev, fstype string) (bool, error)
}

// Config wires a Core.
type Config struct {
	Backends map[string]backends.Backend
	FS       Filesystem
	// ParseMountOpts validates the mountopts option (fs.ParseMountOptions).
	ParseMountOpts MountOptionParser
	StateDir       string // records live in <StateDir>/volumes
	MountDir       string // volume <name> is mounted at <MountDir>/<name>
	Defaults       OptionDefaults
	CreateTimeout  time.Duration
	MountTimeout   time.Duration
	OtherTimeout   time.Duration
	// ReleaseDelay, when positive, keeps a volume of a local-scope backend
	// mounted that long after its last user left, for a use right after
	// to join (release.go); 0 unmounts and detaches at once.
	ReleaseDelay time.Duration
	// UndoTimeout bounds the rollback of a failed Mount, which runs after
	// the Mount's own deadline may have passed. Other teardowns (Release,
	// Remove, Recover) run under their call's deadline.
	UndoTimeout time.Duration
	Log         *slog.Logger
	// Observer, when set, is told of every finished call (for metrics).
	Observer Observer
}

// Observer receives one report per finished operation. backend is ""
// when the call failed before its backend was known, or spans all of them
// (List).
type Observer interface {
	Observe(op, backend string, elapsed time.Duration, err error)
}

// Core manages the volumes of the configured backends and this host's use
// of them.
type Core struct {
	cfg      Config
	log      *slog.Logger
	locks    keyedlock.Map
	recs     *records
	defaults Options // options of a volume blockvol did not create

	seen *seen // volume name → backend name, as last seen

	damageMu sync.RWMutex
	damage   map[string]string // volume name → why its record was set aside

	inflight sync.WaitGroup

	pendMu  sync.Mutex
	pending map[string]*time.Timer // deferred releases (release.go)

	checksMu sync.Mutex
	checks   map[string]ClaimCheck // claim prefix → its checker (CheckClaims)

	lostMu sync.Mutex
	lost   map[string]string // volume name → the host it was lost to (lost.go), once logged

	fsMu sync.Mutex
	fsOf map[string]mountedFS // volume name → the filesystem this process mounted on it (remount.go)
}

// New validates cfg, loads the records of the state directory and returns
// a Core. A record that cannot be read or makes no sense is set aside and
// reported (see quarantine), never fatal. Call Recover before serving.
func New(cfg Config) (*Core, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if len(cfg.Backends) == 0 {
		return nil, errors.New("no backend configured")
	}
	if cfg.UndoTimeout == 0 {
		cfg.UndoTimeout = 30 * time.Second
	}
	cfg.Defaults.Backends = nil
	for n := range cfg.Backends {
		cfg.Defaults.Backends = append(cfg.Defaults.Backends, n)
	}
	sort.Strings(cfg.Defaults.Backends)
	defOpts, err := ParseOptions(nil, cfg.Defaults, cfg.ParseMountOpts)
	if err != nil {
		return nil, fmt.Errorf("defaults: %w", err)
	}
	store, err := state.OpenStore(filepath.Join(cfg.StateDir, "volumes"))
	if err != nil {
		return nil, err
	}
	d := &Core{
		cfg:      cfg,
		log:      cfg.Log,
		recs:     &records{store: store, m: map[string]record{}},
		defaults: defOpts,
		seen:     loadSeen(filepath.Join(cfg.StateDir, "seen.json"), cfg.Log),
		damage:   map[string]string{},
		fsOf:     map[string]mountedFS{},
	}
	names, err := store.Names()
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		var r record
		err := store.Load(n, &r)
		if err == nil {
			err = r.check(n)
		}
		if err != nil {
			d.quarantine(store, n, err)
			continue
		}
		d.recs.m[n] = r
	}
	return d, nil
}

// quarantine sets the damaged record of name aside, so that one damaged
// file never stops the others from being served; Get of the volume then
// reports the damage, and `blockvol doctor` lists the file.
func (d *Core) quarantine(store *state.Store, name string, why error) {
	to, err := store.Quarantine(name)
	if err != nil {
		d.log.Error("damaged volume record cannot be set aside; the volume is served without it", "volume", name, "err", errors.Join(why, err))
		to = "(left in place)"
	} else {
		d.log.Error("damaged volume record set aside; the volume is served without it", "volume", name, "moved_to", to, "err", why)
	}
	d.damageMu.Lock()
	d.damage[name] = fmt.Sprintf("this host's record of the volume was damaged (%v) and set aside as %s: its mounts on this host, if any, are not known", why, to)
	d.damageMu.Unlock()
}

// damaged returns why the record of name was set aside, or "".
func (d *Core) damaged(name string) string {
	d.damageMu.RLock()
	defer d.damageMu.RUnlock()
	return d.damage[name]
}

// Wait blocks until every operation in flight has returned, or ctx ends.
// The server stops accepting requests first; Wait lets the ones under way
// finish or roll back before the process exits, and finishes the deferred
// releases (release.go) at once.
func (d *Core) Wait(ctx context.Context) error {
	d.finishReleases()
	done := make(chan struct{})
	go func() { d.inflight.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// call is one operation in progress: its deadline, its logger and
// what the Observer is told when it ends.
type call struct {
	d       *Core
	op      string
	ctx     context.Context
	cancel  context.CancelFunc
	log     *slog.Logger
	start   time.Time
	backend string // set once known, for the Observer
}

// begin starts an operation under parent: a deadline, a logger with its
// attributes, and the in-flight count. The caller must call end.
func (d *Core) begin(parent context.Context, op, name string, timeout time.Duration, attrs ...any) *call {
	d.inflight.Add(1)
	ctx, cancel := context.WithTimeout(parent, timeout)
	return &call{
		d: d, op: op, ctx: ctx, cancel: cancel, start: time.Now(),
		log: d.log.With(append([]any{"op", op, "volume", quote.Prefix(name)}, attrs...)...),
	}
}

// locked runs body as one call (begin) of operation op on volume name,
// under the volume's lock (acquire): the lock is released, and the call
// ended with the error returned, when body returns. An invalid name or a
// lock not had in time ends the call with that error; body does not run.
func (d *Core) locked(ctx context.Context, op, name string, timeout time.Duration, attrs []any, body func(c *call) error) (err error) {
	c := d.begin(ctx, op, name, timeout, attrs...)
	defer func() { c.end(err) }()
	unlock, err := d.acquire(c.ctx, name)
	if err != nil {
		return err
	}
	defer unlock()
	return body(c)
}

func (c *call) end(err error) {
	c.cancel()
	elapsed := time.Since(c.start)
	c.log.Debug("done", "elapsed", elapsed.Round(time.Millisecond), "err", err)
	if c.d.cfg.Observer != nil {
		c.d.cfg.Observer.Observe(c.op, c.backend, elapsed, err)
	}
	c.d.inflight.Done()
}

// Stats counts the volumes this host has attached (in use or in the middle
// of an operation) and mounted.
func (d *Core) Stats() (attached, mounted int) {
	d.recs.mu.RLock()
	defer d.recs.mu.RUnlock()
	for _, r := range d.recs.m {
		attached++
		if r.Phase == phaseMounted {
			mounted++
		}
	}
	return attached, mounted
}

func (d *Core) mountpoint(name string) string { return filepath.Join(d.cfg.MountDir, name) }

// lookup finds the backend that holds name. It returns an error wrapping
// sentinel.ErrNotFound only when every backend answered and none has the volume;
// any other failure is returned as such, never as "not found".
func (d *Core) lookup(ctx context.Context, name string) (backends.Volume, string, error) {
	known := d.knownBackend(name)
	order := make([]string, 0, len(d.cfg.Backends))
	if known != "" {
		order = append(order, known)
	}
	for _, n := range d.cfg.Defaults.Backends {
		if n != known {
			order = append(order, n)
		}
	}
	var failures []error
	for _, bn := range order {
		v, err := d.cfg.Backends[bn].Get(ctx, name)
		if err == nil {
			d.remember(name, bn)
			return v, bn, nil
		}
		if !errors.Is(err, sentinel.ErrNotFound) {
			failures = append(failures, fmt.Errorf("backend %s: %w", bn, err))
		}
	}
	if len(failures) > 0 {
		return backends.Volume{}, "", fmt.Errorf("volume %s could not be looked up: %w", quote.Short(name), errors.Join(failures...))
	}
	d.remember(name, "") // every backend says so: no longer a known volume
	return backends.Volume{}, "", &userError{kind: sentinel.ErrNotFound, msg: fmt.Sprintf("volume %s does not exist", quote.Short(name))}
}

// knownBackend returns the backend a volume was last seen on, or "".
func (d *Core) knownBackend(name string) string { return d.seen.backend(name) }

func (d *Core) remember(name, backend string) { d.seen.remember(name, backend) }

// Scope is backends.ScopeGlobal when any backend is shared by hosts,
// backends.ScopeLocal otherwise.
func (d *Core) Scope() string {
	scope := backends.ScopeLocal
	for _, b := range d.cfg.Backends {
		if b.Scope() == backends.ScopeGlobal {
			scope = backends.ScopeGlobal
		}
	}
	return scope
}
