// Package plugin implements Docker's VolumeDriver protocol on top of the
// backends (which provide and attach block devices) and the fs package
// (which formats and mounts them).
//
// Contract with Docker and dvdcli (see FIELD-NOTES):
//   - Create carries the options; they are parsed against a whitelist and
//     stored with the volume, because Mount never carries them.
//   - Mount/Unmount with an ID are counted by ID: the volume is mounted at
//     the first and unmounted and detached at the last. An ID-less Mount
//     (dvdcli, Mesos) is one idempotent use; an ID-less Unmount releases it.
//   - A failed Mount undoes its own work: Docker sends no Unmount after it.
//   - Every operation on one volume is serialized; different volumes run in
//     parallel. Every slow path runs under a deadline shorter than Docker's.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/keyedlock"
	"github.com/blockvol/blockvol/state"
	"github.com/docker/go-plugins-helpers/volume"
)

// Filesystem is what the plugin needs of the fs package.
type Filesystem interface {
	// Prepare makes sure dev holds a mountable filesystem, formatting a
	// blank device (or, with overwrite, an ext4/xfs one) as fstype, and
	// refusing any other signature. It returns the type found or made.
	Prepare(ctx context.Context, dev, fstype string, overwrite bool) (fsType string, formatted bool, err error)
	// Mount mounts dev at target (creating target), nosuid and nodev.
	Mount(ctx context.Context, dev, target, fstype string, opts []string) error
	// Unmount unmounts target; not mounted is success.
	Unmount(ctx context.Context, target string) error
	// MountedDevice returns the source mounted at target, "" for none.
	MountedDevice(target string) (string, error)
}

// Config wires a Driver.
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
	// UndoTimeout bounds the rollback of a failed Mount and each teardown.
	UndoTimeout time.Duration
	Log         *slog.Logger
	// Observer, when set, is told of every finished call (for metrics).
	Observer Observer
}

// Observer receives one report per finished plugin call. backend is ""
// when the call failed before its backend was known, or spans all of them
// (List).
type Observer interface {
	Observe(op, backend string, elapsed time.Duration, err error)
}

// Driver implements volume.Driver.
type Driver struct {
	cfg      Config
	log      *slog.Logger
	locks    keyedlock.Map
	recs     *records
	defaults Options // options of a volume blockvol did not create

	whereMu sync.RWMutex
	where   map[string]string // volume name → backend name, as last seen

	inflight sync.WaitGroup
}

var _ volume.Driver = (*Driver)(nil)

// New validates cfg, loads the records of the state directory and returns
// a Driver. Call Recover before serving.
func New(cfg Config) (*Driver, error) {
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
	d := &Driver{
		cfg:      cfg,
		log:      cfg.Log,
		recs:     &records{store: store, m: map[string]record{}},
		defaults: defOpts,
		where:    map[string]string{},
	}
	names, err := store.Names()
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		var r record
		if err := store.Load(n, &r); err != nil {
			return nil, err
		}
		d.recs.m[n] = r
	}
	return d, nil
}

// Wait blocks until every operation in flight has returned, or ctx ends.
// The server stops accepting requests first; Wait lets the ones under way
// finish or roll back before the process exits.
func (d *Driver) Wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() { d.inflight.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// call is one plugin operation in progress: its deadline, its logger and
// what the Observer is told when it ends.
type call struct {
	d       *Driver
	op      string
	ctx     context.Context
	cancel  context.CancelFunc
	log     *slog.Logger
	start   time.Time
	backend string // set once known, for the Observer
}

// begin starts an operation: a deadline, a logger with its attributes, and
// the in-flight count. The caller must call end.
func (d *Driver) begin(op, name string, timeout time.Duration, attrs ...any) *call {
	d.inflight.Add(1)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	return &call{
		d: d, op: op, ctx: ctx, cancel: cancel, start: time.Now(),
		log: d.log.With(append([]any{"op", op, "volume", name}, attrs...)...),
	}
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
func (d *Driver) Stats() (attached, mounted int) {
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

func (d *Driver) mountpoint(name string) string { return filepath.Join(d.cfg.MountDir, name) }

// lookup finds the backend that holds name. It returns an error wrapping
// ErrNotFound only when every backend answered and none has the volume;
// any other failure is returned as such, never as "not found".
func (d *Driver) lookup(ctx context.Context, name string) (backends.Volume, string, error) {
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
		if !errors.Is(err, backends.ErrNotFound) {
			failures = append(failures, fmt.Errorf("backend %s: %w", bn, err))
		}
	}
	if len(failures) > 0 {
		return backends.Volume{}, "", fmt.Errorf("volume %q could not be looked up: %w", name, errors.Join(failures...))
	}
	return backends.Volume{}, "", &userError{kind: ErrNotFound, msg: fmt.Sprintf("volume %q does not exist", name)}
}

// knownBackend returns the backend a volume was last seen on since the
// plugin started, or "".
func (d *Driver) knownBackend(name string) string {
	d.whereMu.RLock()
	defer d.whereMu.RUnlock()
	return d.where[name]
}

func (d *Driver) remember(name, backend string) {
	d.whereMu.Lock()
	if backend == "" {
		delete(d.where, name)
	} else {
		d.where[name] = backend
	}
	d.whereMu.Unlock()
}

// Capabilities reports global scope when any backend is shared by hosts.
func (d *Driver) Capabilities() *volume.CapabilitiesResponse {
	scope := backends.ScopeLocal
	for _, b := range d.cfg.Backends {
		if b.Scope() == backends.ScopeGlobal {
			scope = backends.ScopeGlobal
		}
	}
	return &volume.CapabilitiesResponse{Capabilities: volume.Capability{Scope: scope}}
}
