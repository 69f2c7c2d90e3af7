package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/volumes"
)

// fakeBackend is an in-memory backends.Backend with call log, injectable
// next errors, and an optional gate that holds Attach.
type fakeBackend struct {
	mu       sync.Mutex
	scope    string
	vols     map[string]backends.Volume
	attached map[string]string // name → device
	calls    []string
	nextErr  map[string]error // op → error returned once
	getErr   error            // returned by every Get while set (an outage)
	// attachGate, when set, makes Attach of that name wait for a receive.
	attachGate map[string]chan struct{}
	// attachEntered, when set, receives the name of every Attach that
	// reached its gate.
	attachEntered chan string
	devices       int
	// lastPreempt is the Preempt of the last Attach.
	lastPreempt bool
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{
		scope:      backends.ScopeLocal,
		vols:       map[string]backends.Volume{},
		attached:   map[string]string{},
		nextErr:    map[string]error{},
		attachGate: map[string]chan struct{}{},
	}
}

func (f *fakeBackend) record(op, name string) error {
	f.calls = append(f.calls, op+" "+name)
	if err, ok := f.nextErr[op]; ok {
		delete(f.nextErr, op)
		return err
	}
	return nil
}

func (f *fakeBackend) callLog() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeBackend) failNext(op string, err error) {
	f.mu.Lock()
	f.nextErr[op] = err
	f.mu.Unlock()
}

func (f *fakeBackend) Scope() string { return f.scope }

func (f *fakeBackend) Create(ctx context.Context, req backends.CreateRequest) (backends.Volume, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("create", req.Name); err != nil {
		return backends.Volume{}, err
	}
	if _, ok := f.vols[req.Name]; ok {
		return backends.Volume{}, sentinel.ErrExists
	}
	v := backends.Volume{Name: req.Name, SizeBytes: req.SizeBytes, CreatedAt: time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC), Meta: maps.Clone(req.Meta)}
	f.vols[req.Name] = v
	return v, nil
}

func (f *fakeBackend) Get(ctx context.Context, name string) (backends.Volume, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.getErr != nil {
		return backends.Volume{}, f.getErr
	}
	v, ok := f.vols[name]
	if !ok {
		return backends.Volume{}, fmt.Errorf("%s: %w", name, sentinel.ErrNotFound)
	}
	v.Meta = maps.Clone(v.Meta)
	return v, nil
}

func (f *fakeBackend) List(ctx context.Context) ([]backends.Volume, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []backends.Volume
	for _, v := range f.vols {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (f *fakeBackend) SetMeta(ctx context.Context, name string, meta map[string]string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("setmeta", name); err != nil {
		return err
	}
	v := f.vols[name]
	v.Meta = maps.Clone(meta)
	f.vols[name] = v
	return nil
}

func (f *fakeBackend) Remove(ctx context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("remove", name); err != nil {
		return err
	}
	if _, ok := f.attached[name]; ok {
		return fmt.Errorf("%s is attached: %w", name, sentinel.ErrInUse)
	}
	if _, ok := f.vols[name]; !ok {
		return sentinel.ErrNotFound
	}
	delete(f.vols, name)
	return nil
}

func (f *fakeBackend) Attach(ctx context.Context, name string, opts backends.AttachOptions) (string, error) {
	f.mu.Lock()
	gate, entered := f.attachGate[name], f.attachEntered
	f.mu.Unlock()
	if entered != nil {
		entered <- name
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastPreempt = opts.Preempt
	if err := f.record("attach", name); err != nil {
		return "", err
	}
	if dev, ok := f.attached[name]; ok {
		return dev, nil
	}
	f.devices++
	dev := fmt.Sprintf("/dev/fake%d", f.devices)
	f.attached[name] = dev
	return dev, nil
}

func (f *fakeBackend) Detach(ctx context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("detach", name); err != nil {
		return err
	}
	delete(f.attached, name)
	return nil
}

// fakeFS records filesystem work: which devices hold which filesystem and
// what is mounted where.
type fakeFS struct {
	mu      sync.Mutex
	fsOn    map[string]string // device → fstype ("" = blank)
	mounts  map[string]string // target → device
	calls   []string
	nextErr map[string]error
	dirty   bool // Clean says no superblock is clean
}

func newFakeFS() *fakeFS {
	return &fakeFS{fsOn: map[string]string{}, mounts: map[string]string{}, nextErr: map[string]error{}}
}

func (f *fakeFS) record(call string) error {
	f.calls = append(f.calls, call)
	op, _, _ := strings.Cut(call, " ")
	if err, ok := f.nextErr[op]; ok {
		delete(f.nextErr, op)
		return err
	}
	return nil
}

func (f *fakeFS) failNext(op string, err error) {
	f.mu.Lock()
	f.nextErr[op] = err
	f.mu.Unlock()
}

func (f *fakeFS) callLog() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeFS) Prepare(ctx context.Context, dev, fstype string, overwrite bool) (string, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record(fmt.Sprintf("prepare %s %s overwrite=%t", dev, fstype, overwrite)); err != nil {
		return "", false, err
	}
	if cur := f.fsOn[dev]; cur != "" && !overwrite {
		return cur, false, nil
	}
	f.fsOn[dev] = fstype
	return fstype, true, nil
}

func (f *fakeFS) FormatBlank(ctx context.Context, dev, fstype string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record(fmt.Sprintf("format blank %s %s", dev, fstype)); err != nil {
		return err
	}
	f.fsOn[dev] = fstype
	return nil
}

func (f *fakeFS) Mount(ctx context.Context, dev, target, fstype string, opts []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record(fmt.Sprintf("mount %s %s %s %v", dev, target, fstype, opts)); err != nil {
		return err
	}
	f.mounts[target] = dev
	return nil
}

func (f *fakeFS) Unmount(ctx context.Context, target string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("unmount " + target); err != nil {
		return err
	}
	delete(f.mounts, target)
	return nil
}

func (f *fakeFS) MountedDevice(target string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mounts[target], nil
}

// InUse: a fake device is held only through the fake's own mounts, which
// MountedDevice shows.
func (f *fakeFS) InUse(dev string) (bool, error) { return false, nil }

func (f *fakeFS) Clean(dev, fstype string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record(fmt.Sprintf("clean %s %s", dev, fstype)); err != nil {
		return false, err
	}
	return !f.dirty, nil
}

func (f *fakeFS) mounted() map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.mounts)
}

// fakeMountOpts accepts noatime and discard only.
func fakeMountOpts(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	var out []string
	for _, o := range strings.Split(s, ",") {
		if o != "noatime" && o != "discard" {
			return nil, errors.New("bad mount option " + o)
		}
		out = append(out, o)
	}
	return out, nil
}

type harness struct {
	t        *testing.T
	be       *fakeBackend
	fs       *fakeFS
	stateDir string
	core     *volumes.Core
	d        *Driver
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{t: t, be: newFakeBackend(), fs: newFakeFS(), stateDir: t.TempDir()}
	h.d = h.newDriver()
	return h
}

// newDriver makes a Driver over the harness's backend, fs and state dir,
// as a restarted plugin process would.
func (h *harness) newDriver() *Driver {
	h.t.Helper()
	return h.newDriverWith(func(*volumes.Config) {})
}

// newDriverWith is newDriver with a changed configuration.
func (h *harness) newDriverWith(change func(*volumes.Config)) *Driver {
	h.t.Helper()
	cfg := volumes.Config{
		Backends:       map[string]backends.Backend{"local": h.be},
		FS:             h.fs,
		ParseMountOpts: fakeMountOpts,
		StateDir:       h.stateDir,
		MountDir:       "/mnt/bv",
		Defaults:       volumes.OptionDefaults{Size: "1G", FSType: "ext4", Backend: "local"},
		CreateTimeout:  5 * time.Second,
		MountTimeout:   5 * time.Second,
		OtherTimeout:   5 * time.Second,
		UndoTimeout:    5 * time.Second,
		Log:            slog.New(slog.DiscardHandler),
	}
	change(&cfg)
	core, err := volumes.New(cfg)
	if err != nil {
		h.t.Fatalf("New: %v", err)
	}
	h.core = core
	return New(core)
}

// recordPath is where the core keeps its record of a volume in use.
func (h *harness) recordPath(name string) string {
	return filepath.Join(h.stateDir, "volumes", name+".json")
}

// hasRecord reports whether this host has a record of name on disk.
func (h *harness) hasRecord(name string) bool {
	_, err := os.Stat(h.recordPath(name))
	return err == nil
}

// setPhase rewrites the phase of name's record on disk, as a crash in the
// middle of an operation would have left it.
func (h *harness) setPhase(name, phase string) {
	h.t.Helper()
	var r map[string]any
	b, err := os.ReadFile(h.recordPath(name))
	if err == nil {
		err = json.Unmarshal(b, &r)
	}
	if err != nil {
		h.t.Fatal(err)
	}
	r["phase"] = phase
	if b, err = json.Marshal(r); err == nil {
		err = os.WriteFile(h.recordPath(name), b, 0o600)
	}
	if err != nil {
		h.t.Fatal(err)
	}
}
