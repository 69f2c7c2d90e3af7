package plugin

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/volume"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/volumes"
)

// toolsFS is fakeFS with volumes.FilesystemTools, each call logged.
type toolsFS struct {
	*fakeFS
	growsUnmounted bool // GrowUnmounted does the grow (ext4), or not (xfs)
}

func (f *toolsFS) log(call string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.record(call)
}
func (f *toolsFS) Freeze(_ context.Context, mp string) error { return f.log("freeze " + mp) }
func (f *toolsFS) Thaw(_ context.Context, mp string) error   { return f.log("thaw " + mp) }
func (f *toolsFS) Grow(_ context.Context, dev, mp string) error {
	return f.log("grow " + dev + " " + mp)
}
func (f *toolsFS) GrowUnmounted(_ context.Context, dev string) (bool, error) {
	return f.growsUnmounted, f.log("growunmounted " + dev)
}
func (f *toolsFS) NewUUID(_ context.Context, dev, _ string) error { return f.log("newuuid " + dev) }

// snapBackend is fakeBackend with snapshots, clones and expansion.
type snapBackend struct {
	*fakeBackend
	snaps map[string]backends.Snapshot
	// take, when set, runs in CreateSnapshot instead of the copy.
	take func(ctx context.Context) error
}

func (b *snapBackend) CreateSnapshot(ctx context.Context, vol, name string) (backends.Snapshot, error) {
	if b.take != nil {
		if err := b.take(ctx); err != nil {
			return backends.Snapshot{}, err
		}
	}
	v, err := b.Get(ctx, vol)
	if err != nil {
		return backends.Snapshot{}, err
	}
	s := backends.Snapshot{Name: name, Volume: vol, SizeBytes: v.SizeBytes}
	b.snaps[name] = s
	return s, nil
}
func (b *snapBackend) GetSnapshot(_ context.Context, name string) (backends.Snapshot, error) {
	if s, ok := b.snaps[name]; ok {
		return s, nil
	}
	return backends.Snapshot{}, sentinel.ErrNotFound
}
func (b *snapBackend) ListSnapshots(context.Context, string) ([]backends.Snapshot, error) {
	return slices.Collect(maps.Values(b.snaps)), nil
}
func (b *snapBackend) RemoveSnapshot(_ context.Context, name string) error {
	delete(b.snaps, name)
	return nil
}
func (b *snapBackend) CreateFrom(ctx context.Context, req backends.CreateRequest, src backends.Source) (backends.Volume, error) {
	return b.Create(ctx, req)
}
func (b *snapBackend) Expand(ctx context.Context, name string, size int64) (backends.Volume, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	v := b.vols[name]
	v.SizeBytes = size
	b.vols[name] = v
	return v, b.record("expand", fmt.Sprintf("%s %d", name, size))
}

func newSnapHarness(t *testing.T) (*harness, *snapBackend, *toolsFS) {
	h := newHarness(t)
	be := &snapBackend{fakeBackend: h.be, snaps: map[string]backends.Snapshot{}}
	fs := &toolsFS{fakeFS: h.fs}
	h.d = h.newDriverWith(func(c *volumes.Config) {
		c.Backends = map[string]backends.Backend{"local": be}
		c.FS = fs
		c.CreateTimeout = 200 * time.Millisecond
	})
	return h, be, fs
}

// calls returns the logged calls that start with one of prefixes.
func calls(log []string, prefixes ...string) []string {
	var out []string
	for _, c := range log {
		for _, p := range prefixes {
			if strings.HasPrefix(c, p) {
				out = append(out, c)
			}
		}
	}
	return out
}

// A snapshot of a mounted volume is taken frozen, and the filesystem is
// thawed whatever happens: success, a backend failure, a deadline.
func TestSnapshotFreezesAndAlwaysThaws(t *testing.T) {
	for _, tc := range []struct {
		name string
		take func(ctx context.Context) error
		want error
	}{
		{"taken", nil, nil},
		{"backend fails", func(context.Context) error { return errors.New("disk on fire") }, errors.New("disk on fire")},
		{"deadline", func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }, context.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, be, fs := newSnapHarness(t)
			be.take = tc.take
			if err := h.d.Create(&volume.CreateRequest{Name: "v"}); err != nil {
				t.Fatal(err)
			}
			if _, err := h.d.Mount(&volume.MountRequest{Name: "v", ID: "c1"}); err != nil {
				t.Fatal(err)
			}
			_, err := h.core.CreateSnapshot(t.Context(), "v", "s")
			if tc.want == nil && err != nil || tc.want != nil && (err == nil || !strings.Contains(err.Error(), tc.want.Error())) {
				t.Fatalf("CreateSnapshot = %v; want %v", err, tc.want)
			}
			got := calls(fs.callLog(), "freeze", "thaw")
			if want := []string{"freeze /mnt/bv/v", "thaw /mnt/bv/v"}; !slices.Equal(got, want) {
				t.Fatalf("calls %q; want %q", got, want)
			}
			if h.hasRecord("v") && strings.Contains(readFile(t, h.recordPath("v")), "frozen") {
				t.Fatalf("record still says frozen: %s", readFile(t, h.recordPath("v")))
			}
		})
	}
}

// A plugin killed while the filesystem was frozen: the next start thaws it.
func TestRecoverThawsWhatAKillLeftFrozen(t *testing.T) {
	h, be, fs := newSnapHarness(t)
	if err := h.d.Create(&volume.CreateRequest{Name: "v"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.d.Mount(&volume.MountRequest{Name: "v", ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	// The "kill": the snapshot never returns, the record says frozen.
	rec := readFile(t, h.recordPath("v"))
	writeFile(t, h.recordPath("v"), strings.Replace(rec, `"phase"`, `"frozen":true,"phase"`, 1))
	h.d = h.newDriverWith(func(c *volumes.Config) {
		c.Backends = map[string]backends.Backend{"local": be}
		c.FS = fs
	})
	if err := h.core.Recover(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := calls(fs.callLog(), "thaw"); !slices.Equal(got, []string{"thaw /mnt/bv/v"}) {
		t.Fatalf("thaws %q", got)
	}
}

// A clone is never formatted; before its first mount it gets a new UUID,
// and a clone larger than its source is grown (after the mount, as xfs
// needs); neither happens again at a later mount.
func TestCloneFirstMount(t *testing.T) {
	h, _, fs := newSnapHarness(t)
	if err := h.d.Create(&volume.CreateRequest{Name: "src", Options: map[string]string{"size": "1G"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.core.CreateSnapshot(t.Context(), "src", "s"); err != nil {
		t.Fatal(err)
	}
	err := h.d.Create(&volume.CreateRequest{Name: "small", Options: map[string]string{"from": "s", "size": "512M"}})
	if !errors.Is(err, sentinel.ErrInvalid) || !strings.Contains(err.Error(), "cannot be smaller than its source") {
		t.Fatalf("smaller clone = %v", err)
	}
	if err := h.d.Create(&volume.CreateRequest{Name: "c", Options: map[string]string{"from": "s", "size": "2G"}}); err != nil {
		t.Fatal(err)
	}
	if v, err := h.d.Get(&volume.GetRequest{Name: "c"}); err != nil || v.Volume.Status["from"] != "s" || v.Volume.Status["size"] != "2 GiB" {
		t.Fatalf("inspect of the clone = %+v, %v", v.Volume, err)
	}
	// The fake attaches each time on a new device; both hold the copy.
	d1, d2 := "/dev/fake1", "/dev/fake2"
	fs.fsOn[d1], fs.fsOn[d2] = "ext4", "ext4"
	for range 2 {
		if _, err := h.d.Mount(&volume.MountRequest{Name: "c", ID: "c1"}); err != nil {
			t.Fatal(err)
		}
		if err := h.d.Unmount(&volume.UnmountRequest{Name: "c", ID: "c1"}); err != nil {
			t.Fatal(err)
		}
	}
	got := calls(fs.callLog(), "prepare", "newuuid", "mount", "grow")
	want := []string{
		"prepare " + d1 + " ext4 overwrite=false", "newuuid " + d1, "growunmounted " + d1, "mount " + d1 + " /mnt/bv/c ext4 []", "grow " + d1 + " /mnt/bv/c",
		"prepare " + d2 + " ext4 overwrite=false", "mount " + d2 + " /mnt/bv/c ext4 []",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("calls\n%q\nwant\n%q", got, want)
	}
}

// Resize: a shrink is refused in one sentence; a mounted volume grows
// online; one not mounted grows at its next mount.
func TestResize(t *testing.T) {
	h, _, fs := newSnapHarness(t)
	if err := h.d.Create(&volume.CreateRequest{Name: "v", Options: map[string]string{"size": "1G"}}); err != nil {
		t.Fatal(err)
	}
	err := h.core.Resize(t.Context(), "v", 512<<20)
	if !errors.Is(err, sentinel.ErrInvalid) || err.Error() != `volume "v" is 1 GiB and cannot shrink to 512 MiB; volumes only grow` {
		t.Fatalf("shrink = %v", err)
	}
	if _, err := h.d.Mount(&volume.MountRequest{Name: "v", ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	dev := "/dev/fake1"
	if err := h.core.Resize(t.Context(), "v", 2<<30); err != nil {
		t.Fatal(err)
	}
	if got := calls(fs.callLog(), "grow"); !slices.Equal(got, []string{"grow " + dev + " /mnt/bv/v"}) {
		t.Fatalf("online: %q", got)
	}
	if err := h.d.Unmount(&volume.UnmountRequest{Name: "v", ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if err := h.core.Resize(t.Context(), "v", 3<<30); err != nil {
		t.Fatal(err)
	}
	if got := calls(fs.callLog(), "grow"); len(got) != 1 {
		t.Fatalf("an offline resize grew at once: %q", got)
	}
	d2 := "/dev/fake2"
	fs.fsOn[d2] = "ext4" // the same filesystem, attached anew
	if _, err := h.d.Mount(&volume.MountRequest{Name: "v", ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	want := []string{"grow " + dev + " /mnt/bv/v", "growunmounted " + d2, "grow " + d2 + " /mnt/bv/v"}
	if got := calls(fs.callLog(), "grow"); !slices.Equal(got, want) {
		t.Fatalf("after the next mount: %q; want %q", got, want)
	}
	v, _ := h.be.Get(t.Context(), "v")
	if v.SizeBytes != 3<<30 || v.Meta["blockvol.grow-pending"] != "" {
		t.Fatalf("volume %+v", v)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}
