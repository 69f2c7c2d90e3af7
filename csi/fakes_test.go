package csi

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/volumes"
)

// fakeBackend is an in-memory shared (global scope) backend that records
// the preempt of each Attach.
type fakeBackend struct {
	mu       sync.Mutex
	vols     map[string]backends.Volume
	attached map[string]string
	preempts []bool
	zone     string // this host's zone (backends.Zoner); "" = none
	lastAZ   string // AvailabilityZone of the last Create
}

func (f *fakeBackend) Zone() string { return f.zone }

func (f *fakeBackend) Scope() string { return backends.ScopeGlobal }
func (f *fakeBackend) Create(_ context.Context, r backends.CreateRequest) (backends.Volume, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.vols[r.Name]; ok {
		return backends.Volume{}, sentinel.ErrExists
	}
	f.lastAZ = r.AvailabilityZone
	v := backends.Volume{Name: r.Name, SizeBytes: r.SizeBytes, CreatedAt: time.Unix(0, 0), Meta: maps.Clone(r.Meta)}
	f.vols[r.Name] = v
	return v, nil
}
func (f *fakeBackend) Get(_ context.Context, name string) (backends.Volume, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vols[name]
	if !ok {
		return backends.Volume{}, fmt.Errorf("%s: %w", name, sentinel.ErrNotFound)
	}
	v.Meta = maps.Clone(v.Meta)
	return v, nil
}
func (f *fakeBackend) List(context.Context) ([]backends.Volume, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []backends.Volume
	for _, v := range f.vols {
		out = append(out, v)
	}
	return out, nil
}
func (f *fakeBackend) SetMeta(_ context.Context, name string, meta map[string]string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.vols[name]
	v.Meta = maps.Clone(meta)
	f.vols[name] = v
	return nil
}
func (f *fakeBackend) Remove(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.vols, name)
	return nil
}
func (f *fakeBackend) Attach(_ context.Context, name string, o backends.AttachOptions) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.preempts = append(f.preempts, o.Preempt)
	f.attached[name] = "/dev/fake-" + name
	return f.attached[name], nil
}
func (f *fakeBackend) Detach(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.attached, name)
	return nil
}

// fakeFS keeps mounts in a map; it serves both the core (volumes.Filesystem)
// and the door (Mounts).
type fakeFS struct {
	mu      sync.Mutex
	mounts  map[string]string // target → source
	ro      map[string]bool
	bindErr error // returned by the next Bind
}

func (f *fakeFS) Prepare(_ context.Context, _, fstype string, _ bool) (string, bool, error) {
	return fstype, true, nil
}
func (f *fakeFS) FormatBlank(context.Context, string, string) error { return nil }
func (f *fakeFS) Clean(string, string) (bool, error)                { return false, nil }
func (f *fakeFS) Mount(_ context.Context, dev, target, _ string, _ []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mounts[target] = dev
	return nil
}
func (f *fakeFS) Unmount(_ context.Context, target string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.mounts, target)
	return nil
}
func (f *fakeFS) Unbind(ctx context.Context, target string) error { return f.Unmount(ctx, target) }
func (f *fakeFS) MountedDevice(target string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mounts[target], nil
}
func (f *fakeFS) InUse(dev string) (bool, error) { return false, nil }
func (f *fakeFS) IsMountPoint(target string) (bool, error) {
	d, err := f.MountedDevice(target)
	return d != "", err
}
func (f *fakeFS) Bind(_ context.Context, source, target string, ro bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.bindErr; err != nil {
		f.bindErr = nil
		return err
	}
	if cur, ok := f.mounts[target]; ok {
		if cur != f.mounts[source] || f.ro[target] != ro {
			return fmt.Errorf("%s mounted differently: %w", target, errDifferent)
		}
		return nil
	}
	f.mounts[target] = f.mounts[source]
	if f.mounts[target] == "" {
		f.mounts[target] = source // a device node
	}
	f.ro[target] = ro
	return nil
}

var errDifferent = fmt.Errorf("mounted differently")

const (
	nodeA = "0b5c51b0-0000-4000-8000-00000000000a"
	nodeB = "0b5c51b0-0000-4000-8000-00000000000b"
)

// fakeHost is a CSI door over the fakes, with node id nodeA.
func fakeHost(t *testing.T) (*Server, *fakeBackend, *fakeFS) {
	return fakeHostInZone(t, "")
}

// fakeHostInZone is fakeHost whose backend has availability zones, this
// host in zone.
func fakeHostInZone(t *testing.T, zone string) (*Server, *fakeBackend, *fakeFS) {
	t.Helper()
	be := &fakeBackend{vols: map[string]backends.Volume{}, attached: map[string]string{}, zone: zone}
	f := &fakeFS{mounts: map[string]string{}, ro: map[string]bool{}}
	core, err := volumes.New(volumes.Config{
		Backends:       map[string]backends.Backend{"shared": be},
		FS:             f,
		ParseMountOpts: func(string) ([]string, error) { return nil, nil },
		StateDir:       t.TempDir(),
		MountDir:       "/mnt/bv",
		Defaults:       volumes.OptionDefaults{Size: "1G", FSType: "ext4", Backend: "shared"},
		CreateTimeout:  5 * time.Second,
		MountTimeout:   5 * time.Second,
		OtherTimeout:   5 * time.Second,
		Log:            slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Core: core, Mounts: f, NodeID: nodeA, Log: slog.New(slog.DiscardHandler), ErrMountedDifferently: errDifferent})
	if err != nil {
		t.Fatal(err)
	}
	return s, be, f
}
