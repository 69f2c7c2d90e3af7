package volumes

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/sentinel"
)

// sharedBackend is an in-memory shared backend that keeps a claim per
// volume, as iscsitarget and cinder do: "" for nobody, me for this host,
// another name for another host. It may reconcile.
type sharedBackend struct {
	mu      sync.Mutex
	vols    map[string]map[string]string // name → meta
	claim   map[string]string
	calls   []string
	reconc  backends.Reconciled // what Reconcile answers
	reconcN [][]string          // the names of each Reconcile
}

const me = "this-host"

func newSharedBackend(names ...string) *sharedBackend {
	b := &sharedBackend{vols: map[string]map[string]string{}, claim: map[string]string{}}
	for _, n := range names {
		b.vols[n] = map[string]string{"fstype": "ext4"}
	}
	return b
}

func (b *sharedBackend) log(s string) { b.calls = append(b.calls, s) }

func (b *sharedBackend) callLog() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.calls)
}

func (b *sharedBackend) setClaim(name, holder string) {
	b.mu.Lock()
	b.claim[name] = holder
	b.mu.Unlock()
}

func (b *sharedBackend) Scope() string { return backends.ScopeGlobal }

func (b *sharedBackend) Create(ctx context.Context, req backends.CreateRequest) (backends.Volume, error) {
	return backends.Volume{}, errors.New("not used")
}

func (b *sharedBackend) volume(name string) backends.Volume {
	att := &backends.Attachment{}
	switch h := b.claim[name]; h {
	case me:
		att.Here = true
	default:
		att.Holder = h
	}
	return backends.Volume{Name: name, SizeBytes: 1 << 30, Meta: maps.Clone(b.vols[name]), Attachment: att}
}

func (b *sharedBackend) Get(ctx context.Context, name string) (backends.Volume, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.vols[name]; !ok {
		return backends.Volume{}, sentinel.ErrNotFound
	}
	return b.volume(name), nil
}

func (b *sharedBackend) List(ctx context.Context) ([]backends.Volume, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []backends.Volume
	for _, n := range slices.Sorted(maps.Keys(b.vols)) {
		out = append(out, b.volume(n))
	}
	return out, nil
}

func (b *sharedBackend) SetMeta(ctx context.Context, name string, meta map[string]string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.vols[name] = maps.Clone(meta)
	return nil
}

func (b *sharedBackend) Remove(ctx context.Context, name string) error { return errors.New("not used") }

// Attach claims the volume for this host, fencing another holder only
// with Preempt, as the real shared backends do.
func (b *sharedBackend) Attach(ctx context.Context, name string, opts backends.AttachOptions) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.log(fmt.Sprintf("attach %s preempt=%v", name, opts.Preempt))
	if h := b.claim[name]; h != "" && h != me && !opts.Preempt {
		return "", fmt.Errorf("host %s has it: %w", h, sentinel.ErrInUse)
	}
	b.claim[name] = me
	return "/dev/sd-" + name, nil
}

// Detach clears the claim only when it names this host.
func (b *sharedBackend) Detach(ctx context.Context, name string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.log("detach " + name)
	if b.claim[name] == me {
		b.claim[name] = ""
	}
	return nil
}

func (b *sharedBackend) Reconcile(ctx context.Context, names []string) (backends.Reconciled, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.reconcN = append(b.reconcN, slices.Clone(names))
	return b.reconc, nil
}

// mountFS is a Filesystem that mounts in a map; unmountErr fails Unmount.
type mountFS struct {
	mu         sync.Mutex
	mounts     map[string]string
	calls      []string
	unmountErr error
}

func (f *mountFS) Prepare(ctx context.Context, dev, fstype string, overwrite bool) (string, bool, error) {
	return fstype, false, nil
}

func (f *mountFS) FormatBlank(context.Context, string, string) error { return nil }
func (f *mountFS) Clean(string, string) (bool, error)                { return false, nil }

func (f *mountFS) Mount(ctx context.Context, dev, target, fstype string, opts []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "mount "+target)
	f.mounts[target] = dev
	return nil
}

func (f *mountFS) Unmount(ctx context.Context, target string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "unmount "+target)
	if f.unmountErr != nil {
		return f.unmountErr
	}
	delete(f.mounts, target)
	return nil
}

func (f *mountFS) MountedDevice(target string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mounts[target], nil
}

func (f *mountFS) InUse(dev string) (bool, error) { return false, nil }

// lostEnv is a Core over a sharedBackend with volume "v" mounted here
// for user "u1", and its log.
type lostEnv struct {
	core *Core
	be   *sharedBackend
	fs   *mountFS
	logs *bytes.Buffer
	mp   string
}

func newLostEnv(t *testing.T) *lostEnv {
	t.Helper()
	e := &lostEnv{be: newSharedBackend("v"), fs: &mountFS{mounts: map[string]string{}}, logs: &bytes.Buffer{}}
	core, err := New(Config{
		Backends:       map[string]backends.Backend{"shared": e.be},
		FS:             e.fs,
		ParseMountOpts: func(s string) ([]string, error) { return nil, nil },
		StateDir:       t.TempDir(),
		MountDir:       t.TempDir(),
		Defaults:       OptionDefaults{Size: "1G", FSType: "ext4", Backend: "shared"},
		CreateTimeout:  5 * time.Second,
		MountTimeout:   5 * time.Second,
		OtherTimeout:   5 * time.Second,
		Log:            slog.New(slog.NewTextHandler(&lockedWriter{w: e.logs}, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	e.core = core
	if e.mp, err = core.Use(context.Background(), "v", "u1"); err != nil {
		t.Fatal(err)
	}
	return e
}

// takeOver is another host's preempt: the claim names it now.
func (e *lostEnv) takeOver() { e.be.setClaim("v", "agent-b (initiator iqn.b)") }

// warnings returns the log's lines saying the volume was taken over.
func (e *lostEnv) warnings() []string {
	var out []string
	for _, l := range strings.Split(e.logs.String(), "\n") {
		if strings.Contains(l, "level=WARN") && strings.Contains(l, "taken over by another host") {
			out = append(out, l)
		}
	}
	return out
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestLostVolumeIsReportedByGetAndList(t *testing.T) {
	ctx := context.Background()
	e := newLostEnv(t)
	info, err := e.core.Get(ctx, "v")
	if err != nil || info.Local == nil || info.Local.Lost || info.Local.MountedAt() != e.mp {
		t.Fatalf("before the takeover: Get = %+v, %v; want mounted at %s, not lost", info.Local, err, e.mp)
	}
	e.takeOver()
	for range 2 {
		info, err = e.core.Get(ctx, "v")
		if err != nil {
			t.Fatal(err)
		}
		if l := info.Local; l == nil || !l.Lost || l.HeldBy != "agent-b (initiator iqn.b)" || l.MountedAt() != "" {
			t.Fatalf("after the takeover: Get's Local = %+v; want lost to agent-b, no mountpoint", l)
		}
		list, err := e.core.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 1 || list[0].Local == nil || !list[0].Local.Lost || list[0].Local.HeldBy != "agent-b (initiator iqn.b)" {
			t.Fatalf("after the takeover: List = %+v; want v lost to agent-b", list)
		}
	}
	w := e.warnings()
	if len(w) != 1 || !strings.Contains(w[0], `holder="agent-b (initiator iqn.b)"`) || !strings.Contains(w[0], "volume=v") {
		t.Errorf("want one WARN line naming the volume and its holder for the loss, got %d:\n%s", len(w), strings.Join(w, "\n"))
	}
	if got := e.be.callLog(); slices.ContainsFunc(got, func(c string) bool { return strings.HasPrefix(c, "attach") && c != "attach v preempt=false" }) || len(got) != 1 {
		t.Errorf("backend calls = %v; want the first attach only", got)
	}
}

func TestLostVolumeNotReportedWhenOwnOperationCameBetween(t *testing.T) {
	e := newLostEnv(t)
	r, _ := e.core.recs.get("v")
	seq := r.seq
	if err := e.core.recs.put(r); err != nil { // this host's own change, meanwhile
		t.Fatal(err)
	}
	l := localOf(r)
	e.core.markLost(slog.New(slog.DiscardHandler), "v", seq, l, &backends.Attachment{Holder: "agent-b"})
	if l.Lost {
		t.Error("a claim read before this host's own change of the record was taken as a loss")
	}
}

func TestMountOfLostVolumeIsRefusedNamingTheHolder(t *testing.T) {
	ctx := context.Background()
	for _, c := range []Claim{
		{Name: "v", User: "u2"},                // a second user joining
		{Name: "v", User: "u1"},                // the same user again
		{Name: "v", User: "u3", Preempt: true}, // even asking to take it over
	} {
		e := newLostEnv(t)
		e.takeOver()
		_, err := e.core.Claim(ctx, c)
		if !errors.Is(err, sentinel.ErrInUse) {
			t.Fatalf("Claim %+v of a lost volume: err = %v; want ErrInUse", c, err)
		}
		if msg := err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, "agent-b (initiator iqn.b)") {
			t.Errorf("refusal should be one sentence naming the holder: %q", msg)
		}
		if got := e.be.callLog(); len(got) != 1 {
			t.Errorf("backend calls = %v; want no attach after the first (nothing writes the claim back)", got)
		}
		if h := e.be.claim["v"]; h != "agent-b (initiator iqn.b)" {
			t.Errorf("claim = %q after the refused mount; want agent-b's", h)
		}
	}
}

func TestUnmountOfLostVolumeReleasesThisHostsSide(t *testing.T) {
	ctx := context.Background()
	e := newLostEnv(t)
	e.takeOver()
	if err := e.core.Release(ctx, "v", "u1"); err != nil {
		t.Fatalf("Release of a lost volume: %v", err)
	}
	if _, ok := e.core.recs.get("v"); ok {
		t.Error("record kept after the release")
	}
	if len(e.fs.mounts) != 0 {
		t.Errorf("still mounted: %v", e.fs.mounts)
	}
	if got := e.be.callLog(); !slices.Equal(got, []string{"attach v preempt=false", "detach v"}) {
		t.Errorf("backend calls = %v; want attach, detach", got)
	}
	if h := e.be.claim["v"]; h != "agent-b (initiator iqn.b)" {
		t.Errorf("claim = %q after the release; want agent-b's untouched", h)
	}
}

func TestUnmountOfLostVolumeSucceedsWhenItsReleaseCannotFinish(t *testing.T) {
	ctx := context.Background()
	e := newLostEnv(t)
	e.takeOver()
	e.fs.unmountErr = errors.New("umount: target is busy")
	if err := e.core.Release(ctx, "v", "u1"); err != nil {
		t.Fatalf("Release of a lost volume whose unmount fails: %v; want success (Docker's unmount must not fail)", err)
	}
	r, ok := e.core.recs.get("v")
	if !ok || len(r.Users) != 0 || r.Phase != phaseUnmounting {
		t.Fatalf("record = %+v, %v; want kept without users, unmounting, for a retry", r, ok)
	}
	// A later Mount finishes the release before it attaches anew.
	e.fs.unmountErr = nil
	if _, err := e.core.Claim(ctx, Claim{Name: "v", User: "u2", Preempt: true}); err != nil {
		t.Fatal(err)
	}
	want := []string{"unmount " + e.mp, "unmount " + e.mp, "mount " + e.mp}
	if got := e.fs.calls[1:]; !slices.Equal(got, want) {
		t.Errorf("fs calls = %v; want %v (the stale mount released first)", got, want)
	}
	if got := e.be.callLog(); !slices.Equal(got, []string{"attach v preempt=false", "detach v", "attach v preempt=true"}) {
		t.Errorf("backend calls = %v", got)
	}
}

func TestWatchFinishesTheReleaseOfALostVolume(t *testing.T) {
	ctx := context.Background()
	e := newLostEnv(t)
	e.takeOver()
	e.fs.unmountErr = errors.New("umount: target is busy")
	if err := e.core.Release(ctx, "v", "u1"); err != nil {
		t.Fatal(err)
	}
	w := watcher{d: e.core, failed: map[string]string{}}
	w.tick(ctx) // still busy
	if _, ok := e.core.recs.get("v"); !ok {
		t.Fatal("record dropped although the unmount failed")
	}
	e.fs.unmountErr = nil // the last process holding the mount has gone
	w.tick(ctx)
	if _, ok := e.core.recs.get("v"); ok || len(e.fs.mounts) != 0 {
		t.Fatalf("the lost volume's release is not finished by the watch: record kept %v, mounts %v", ok, e.fs.mounts)
	}
	if got := e.be.callLog(); !slices.Equal(got, []string{"attach v preempt=false", "detach v"}) {
		t.Errorf("backend calls = %v; want attach, detach", got)
	}
	if h := e.be.claim["v"]; h != "agent-b (initiator iqn.b)" {
		t.Errorf("claim = %q; want agent-b's untouched", h)
	}
	if got := e.be.reconcN; len(got) != 0 {
		t.Errorf("Reconcile called for a volume with no user: %v", got)
	}
}

func TestUnmountOfVolumeNotLostStillFailsWhenItCannotUnmount(t *testing.T) {
	e := newLostEnv(t)
	e.fs.unmountErr = errors.New("umount: target is busy")
	if err := e.core.Release(context.Background(), "v", "u1"); err == nil {
		t.Fatal("Release succeeded although the unmount failed and the volume is this host's")
	}
}

func TestWatchReconcilesMountedVolumesAndSkipsLostOnes(t *testing.T) {
	ctx := context.Background()
	e := newLostEnv(t)
	w := watcher{d: e.core, failed: map[string]string{}}
	w.tick(ctx)
	e.be.reconc = backends.Reconciled{Repaired: map[string]string{"v": "iSCSI target exported again"}}
	w.tick(ctx)
	if !strings.Contains(e.logs.String(), "exported again") {
		t.Errorf("a repair is not logged:\n%s", e.logs)
	}
	e.takeOver()
	e.be.reconc = backends.Reconciled{Lost: map[string]string{"v": "agent-b (initiator iqn.b)"}}
	w.tick(ctx)
	w.tick(ctx) // lost: not asked about again
	if got := e.be.reconcN; len(got) != 3 || !slices.Equal(got[0], []string{"v"}) {
		t.Errorf("Reconcile calls = %v; want three of [v]", got)
	}
	if len(e.warnings()) != 1 {
		t.Errorf("want one WARN line for the loss, got:\n%s", e.logs)
	}
	if err := e.core.Release(ctx, "v", "u1"); err != nil {
		t.Fatal(err)
	}
	w.tick(ctx) // nothing mounted: no backend is asked
	if got := e.be.reconcN; len(got) != 3 {
		t.Errorf("Reconcile called with nothing mounted: %v", got)
	}
}
