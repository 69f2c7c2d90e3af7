package loop

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/internal/sentinel"
)

const mib = 1 << 20

// env is one test's backend with a temporary data directory and a fake
// sysfs tree.
type env struct {
	t    *testing.T
	root string // parent of data, sys and dev
	data string
	sys  string
	fake *hostexec.Fake
	b    *Backend
}

func newEnv(t *testing.T, calls ...hostexec.Call) *env {
	t.Helper()
	root := t.TempDir()
	e := &env{
		t:    t,
		root: root,
		data: filepath.Join(root, "data"),
		sys:  filepath.Join(root, "sys"),
		fake: hostexec.NewFake(t, calls...),
	}
	if err := os.MkdirAll(filepath.Join(e.sys, "block", "vda"), 0o755); err != nil {
		t.Fatal(err)
	}
	// An unbound loop device, as the kernel shows it: no loop directory.
	if err := os.MkdirAll(filepath.Join(e.sys, "block", "loop0"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.b = e.open()
	t.Cleanup(e.fake.Done)
	return e
}

func (e *env) open() *Backend {
	e.t.Helper()
	b, err := New(Config{DataDir: e.data, SysRoot: e.sys, DevRoot: "/dev"}, e.fake, testLogger(e.t))
	if err != nil {
		e.t.Fatal(err)
	}
	b.removeGrace = 100 * time.Millisecond
	b.pollEvery = 5 * time.Millisecond
	return b
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func (e *env) img(name string) string  { return filepath.Join(e.data, name+".img") }
func (e *env) json(name string) string { return filepath.Join(e.data, name+".json") }

// bind makes fake loop device loopN show backing file file.
func (e *env) bind(n int, file string) {
	e.t.Helper()
	dir := filepath.Join(e.sys, "block", fmt.Sprintf("loop%d", n), "loop")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "backing_file"), []byte(file+"\n"), 0o644); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "autoclear"), []byte("0\n"), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) unbind(n int) {
	e.t.Helper()
	if err := os.RemoveAll(filepath.Join(e.sys, "block", fmt.Sprintf("loop%d", n), "loop")); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) setAutoclear(n int) {
	e.t.Helper()
	p := filepath.Join(e.sys, "block", fmt.Sprintf("loop%d", n), "loop", "autoclear")
	if err := os.WriteFile(p, []byte("1\n"), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) create(name string, size int64, meta map[string]string) backends.Volume {
	e.t.Helper()
	v, err := e.b.Create(context.Background(), backends.CreateRequest{Name: name, SizeBytes: size, Meta: meta})
	if err != nil {
		e.t.Fatalf("Create(%q): %v", name, err)
	}
	return v
}

func exists(t *testing.T, path string) bool {
	t.Helper()
	_, err := os.Lstat(path)
	if err == nil {
		return true
	}
	if !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return false
}

func TestNewCreatesDataDir(t *testing.T) {
	e := newEnv(t)
	fi, err := os.Stat(e.data)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Errorf("data dir mode = %v, want drwx------", fi.Mode())
	}
	if got := e.b.Scope(); got != backends.ScopeLocal {
		t.Errorf("Scope() = %q, want %q", got, backends.ScopeLocal)
	}
	if _, err := New(Config{}, e.fake, nil); err == nil {
		t.Error("New without DataDir succeeded")
	}
}

func TestRoundTrip(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	before := time.Now().Add(-time.Second)
	v := e.create("vol1", 64*mib, map[string]string{"fs": "ext4"})
	if v.Name != "vol1" || v.SizeBytes != 64*mib || v.Meta["fs"] != "ext4" {
		t.Errorf("Create returned %+v", v)
	}

	fi, err := os.Stat(e.img("vol1"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 64*mib || fi.Mode().Perm() != 0o600 {
		t.Errorf("image size %d mode %v, want %d 0600", fi.Size(), fi.Mode(), 64*mib)
	}
	if fi, err := os.Stat(e.json("vol1")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("record: %v %v", fi, err)
	}

	got, err := e.b.Get(ctx, "vol1")
	if err != nil {
		t.Fatal(err)
	}
	want := backends.Volume{
		Name:      "vol1",
		SizeBytes: 64 * mib,
		CreatedAt: got.CreatedAt,
		Meta:      map[string]string{"fs": "ext4"},
		Status:    map[string]any{"backend": "loop", "image": e.img("vol1"), "copies": got.Status["copies"]},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Get = %+v\nwant %+v", got, want)
	}
	if got.CreatedAt.Before(before) || got.CreatedAt.After(time.Now().Add(time.Second)) {
		t.Errorf("CreatedAt = %v", got.CreatedAt)
	}
	if !got.CreatedAt.Equal(v.CreatedAt) {
		t.Errorf("Get CreatedAt %v != Create CreatedAt %v", got.CreatedAt, v.CreatedAt)
	}

	list, err := e.b.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || !reflect.DeepEqual(list[0], want) {
		t.Errorf("List = %+v", list)
	}

	if err := e.b.SetMeta(ctx, "vol1", map[string]string{"fs": "xfs", "owner": "me"}); err != nil {
		t.Fatal(err)
	}
	got2, err := e.b.Get(ctx, "vol1")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got2.Meta, map[string]string{"fs": "xfs", "owner": "me"}) {
		t.Errorf("Meta after SetMeta = %v", got2.Meta)
	}
	if got2.SizeBytes != 64*mib || !got2.CreatedAt.Equal(got.CreatedAt) {
		t.Errorf("SetMeta changed size/created_at: %+v", got2)
	}

	if err := e.b.Remove(ctx, "vol1"); err != nil {
		t.Fatal(err)
	}
	if exists(t, e.img("vol1")) || exists(t, e.json("vol1")) {
		t.Error("files left after Remove")
	}
	if _, err := e.b.Get(ctx, "vol1"); !errors.Is(err, sentinel.ErrNotFound) {
		t.Errorf("Get after Remove: %v, want ErrNotFound", err)
	}
	if err := e.b.Remove(ctx, "vol1"); !errors.Is(err, sentinel.ErrNotFound) {
		t.Errorf("second Remove: %v, want ErrNotFound", err)
	}
	if err := e.b.SetMeta(ctx, "vol1", nil); !errors.Is(err, sentinel.ErrNotFound) {
		t.Errorf("SetMeta after Remove: %v, want ErrNotFound", err)
	}
	if list, err := e.b.List(ctx); err != nil || len(list) != 0 {
		t.Errorf("List after Remove = %v, %v", list, err)
	}
}

func TestRecordFormat(t *testing.T) {
	e := newEnv(t)
	e.create("v", 4096, map[string]string{"k": "v"})
	data, err := os.ReadFile(e.json("v"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	for _, want := range []string{`"size_bytes":4096`, `"created_at":"`, `"meta":{"k":"v"}`} {
		if !strings.Contains(s, want) {
			t.Errorf("record %s lacks %s", s, want)
		}
	}
}

func TestMetaNotAliased(t *testing.T) {
	e := newEnv(t)
	meta := map[string]string{"a": "1"}
	v := e.create("v", 4096, meta)
	meta["a"] = "changed"
	v.Meta["a"] = "changed too"
	got, err := e.b.Get(context.Background(), "v")
	if err != nil {
		t.Fatal(err)
	}
	if got.Meta["a"] != "1" {
		t.Errorf("Meta = %v", got.Meta)
	}
}

func TestCreateTwice(t *testing.T) {
	e := newEnv(t)
	e.create("dup", 4096, map[string]string{"first": "yes"})
	_, err := e.b.Create(context.Background(), backends.CreateRequest{Name: "dup", SizeBytes: 8192})
	if !errors.Is(err, sentinel.ErrExists) {
		t.Fatalf("second Create: %v, want ErrExists", err)
	}
	if !strings.Contains(err.Error(), `"dup"`) {
		t.Errorf("error %q does not name the volume", err)
	}
	got, err := e.b.Get(context.Background(), "dup")
	if err != nil {
		t.Fatal(err)
	}
	if got.SizeBytes != 4096 || got.Meta["first"] != "yes" {
		t.Errorf("second Create altered the volume: %+v", got)
	}
}

func TestCreateInvalid(t *testing.T) {
	for _, tc := range []struct {
		desc string
		req  backends.CreateRequest
		msg  string
	}{
		{"volume type", backends.CreateRequest{SizeBytes: 4096, VolumeType: "ssd"}, "does not support"},
		{"iops", backends.CreateRequest{SizeBytes: 4096, IOPS: 100}, "does not support"},
		{"zone", backends.CreateRequest{SizeBytes: 4096, AvailabilityZone: "nova"}, "does not support"},
		{"zero size", backends.CreateRequest{SizeBytes: 0}, "positive"},
		{"negative size", backends.CreateRequest{SizeBytes: -512}, "positive"},
		{"unaligned size", backends.CreateRequest{SizeBytes: 1000}, "multiple of 512"},
		{"unaligned size 2", backends.CreateRequest{SizeBytes: 64*mib + 1}, "multiple of 512"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			e := newEnv(t)
			tc.req.Name = "v"
			_, err := e.b.Create(context.Background(), tc.req)
			if !errors.Is(err, sentinel.ErrInvalid) {
				t.Fatalf("Create: %v, want ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.msg) || !strings.Contains(err.Error(), `"v"`) {
				t.Errorf("error %q lacks %q or the volume name", err, tc.msg)
			}
			if exists(t, e.img("v")) || exists(t, e.json("v")) {
				t.Error("invalid Create left files")
			}
		})
	}
}

func TestCreateAlignedSizeKeptExactly(t *testing.T) {
	e := newEnv(t)
	v := e.create("v", 512*3, nil)
	fi, err := os.Stat(e.img("v"))
	if err != nil {
		t.Fatal(err)
	}
	if v.SizeBytes != 1536 || fi.Size() != 1536 {
		t.Errorf("size %d, file %d, want 1536", v.SizeBytes, fi.Size())
	}
}

func TestAttachAlreadyAttached(t *testing.T) {
	e := newEnv(t) // no losetup call expected
	e.create("v", 4096, nil)
	e.bind(5, e.img("v"))
	e.bind(2, e.img("other"))
	dev, err := e.b.Attach(context.Background(), "v", backends.AttachOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if dev != "/dev/loop5" {
		t.Errorf("Attach = %q, want /dev/loop5", dev)
	}
	got, err := e.b.Get(context.Background(), "v")
	if err != nil {
		t.Fatal(err)
	}
	if got.Status["device"] != "/dev/loop5" {
		t.Errorf("Status = %v", got.Status)
	}
}

func TestAttachRunsLosetup(t *testing.T) {
	e := newEnv(t)
	e.create("v", 4096, nil)
	e.fake.Expect(hostexec.Call{
		Argv:   []string{"losetup", "--find", "--show", "--nooverlap", e.img("v")},
		Stdout: "/dev/loop3\n",
		Do:     func() { e.bind(3, e.img("v")) },
	})
	dev, err := e.b.Attach(context.Background(), "v", backends.AttachOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if dev != "/dev/loop3" {
		t.Errorf("Attach = %q, want /dev/loop3", dev)
	}
	// Attach again: looked up afresh in sysfs, no second losetup.
	if dev, err := e.b.Attach(context.Background(), "v", backends.AttachOptions{}); err != nil || dev != "/dev/loop3" {
		t.Errorf("second Attach = %q, %v", dev, err)
	}
	// The kernel moved it (detached and reattached elsewhere): found afresh.
	e.unbind(3)
	e.bind(7, e.img("v"))
	if dev, err := e.b.Attach(context.Background(), "v", backends.AttachOptions{}); err != nil || dev != "/dev/loop7" {
		t.Errorf("Attach after move = %q, %v", dev, err)
	}
}

func TestAttachIgnoresDeletedBackingFile(t *testing.T) {
	e := newEnv(t)
	e.create("v", 4096, nil)
	e.bind(1, e.img("v")+" (deleted)")
	e.fake.Expect(hostexec.Call{
		Argv:   []string{"losetup", "--find", "--show", "--nooverlap", e.img("v")},
		Stdout: "/dev/loop2\n",
	})
	dev, err := e.b.Attach(context.Background(), "v", backends.AttachOptions{})
	if err != nil || dev != "/dev/loop2" {
		t.Errorf("Attach = %q, %v; want /dev/loop2", dev, err)
	}
}

func TestAttachLosetupFails(t *testing.T) {
	e := newEnv(t)
	e.create("v", 4096, nil)
	e.fake.Expect(hostexec.Call{
		Argv:   []string{"losetup", "--find", "--show", "--nooverlap", e.img("v")},
		Code:   1,
		Stderr: "losetup: cannot find an unused loop device",
	})
	_, err := e.b.Attach(context.Background(), "v", backends.AttachOptions{})
	var ee *hostexec.ExitError
	if !errors.As(err, &ee) || !strings.Contains(err.Error(), `"v"`) {
		t.Errorf("Attach: %v, want a wrapped ExitError naming the volume", err)
	}
}

func TestAttachBadOutput(t *testing.T) {
	e := newEnv(t)
	e.create("v", 4096, nil)
	e.fake.Expect(hostexec.Call{
		Argv: []string{"losetup", "--find", "--show", "--nooverlap", e.img("v")},
	})
	if dev, err := e.b.Attach(context.Background(), "v", backends.AttachOptions{}); err == nil {
		t.Errorf("Attach with empty losetup output = %q, want an error", dev)
	}
}

func TestAttachMissing(t *testing.T) {
	e := newEnv(t)
	if _, err := e.b.Attach(context.Background(), "nope", backends.AttachOptions{}); !errors.Is(err, sentinel.ErrNotFound) {
		t.Errorf("Attach: %v, want ErrNotFound", err)
	}
}

func TestDetachTwoDevices(t *testing.T) {
	e := newEnv(t)
	e.create("v", 4096, nil)
	e.bind(10, e.img("v"))
	e.bind(2, e.img("v"))
	e.bind(4, e.img("other"))
	e.fake.Expect(
		hostexec.Call{Argv: []string{"losetup", "--detach", "/dev/loop2"}},
		hostexec.Call{Argv: []string{"losetup", "--detach", "/dev/loop10"}},
	)
	if err := e.b.Detach(context.Background(), "v"); err != nil {
		t.Fatal(err)
	}
}

func TestDetachNone(t *testing.T) {
	e := newEnv(t) // no call expected
	e.create("v", 4096, nil)
	e.bind(4, e.img("other"))
	if err := e.b.Detach(context.Background(), "v"); err != nil {
		t.Fatal(err)
	}
	// Idempotent even for a name that does not exist.
	if err := e.b.Detach(context.Background(), "never-created"); err != nil {
		t.Fatal(err)
	}
}

func TestDetachDeviceVanished(t *testing.T) {
	e := newEnv(t)
	e.create("v", 4096, nil)
	e.bind(3, e.img("v"))
	e.fake.Expect(hostexec.Call{
		Argv:   []string{"losetup", "--detach", "/dev/loop3"},
		Code:   1,
		Stderr: "losetup: /dev/loop3: detach failed: No such device or address",
		Do:     func() { e.unbind(3) },
	})
	if err := e.b.Detach(context.Background(), "v"); err != nil {
		t.Errorf("Detach of a device that went away meanwhile: %v", err)
	}
}

func TestDetachFails(t *testing.T) {
	e := newEnv(t)
	e.create("v", 4096, nil)
	e.bind(3, e.img("v"))
	e.fake.Expect(hostexec.Call{
		Argv:   []string{"losetup", "--detach", "/dev/loop3"},
		Code:   1,
		Stderr: "losetup: /dev/loop3: detach failed: Permission denied",
	})
	err := e.b.Detach(context.Background(), "v")
	if err == nil || !strings.Contains(err.Error(), "/dev/loop3") || !strings.Contains(err.Error(), `"v"`) {
		t.Errorf("Detach: %v, want an error naming device and volume", err)
	}
}

func TestRemoveAttached(t *testing.T) {
	e := newEnv(t)
	e.create("v", 4096, nil)
	e.bind(6, e.img("v"))
	err := e.b.Remove(context.Background(), "v")
	if !errors.Is(err, sentinel.ErrInUse) {
		t.Fatalf("Remove: %v, want ErrInUse", err)
	}
	if !strings.Contains(err.Error(), "/dev/loop6") {
		t.Errorf("error %q does not name the device", err)
	}
	if !exists(t, e.img("v")) || !exists(t, e.json("v")) {
		t.Error("Remove of an attached volume deleted files")
	}
}

func TestRemoveWaitsForAutoclear(t *testing.T) {
	e := newEnv(t)
	e.create("v", 4096, nil)
	e.bind(6, e.img("v"))
	e.setAutoclear(6)
	done := make(chan struct{})
	timer := time.AfterFunc(20*time.Millisecond, func() {
		defer close(done)
		os.RemoveAll(filepath.Join(e.sys, "block", "loop6", "loop"))
	})
	defer timer.Stop()
	e.b.removeGrace = 5 * time.Second
	if err := e.b.Remove(context.Background(), "v"); err != nil {
		t.Fatalf("Remove while the kernel finishes a detach: %v", err)
	}
	<-done
	if exists(t, e.img("v")) || exists(t, e.json("v")) {
		t.Error("files left after Remove")
	}
}

func TestRemoveAutoclearNeverClears(t *testing.T) {
	e := newEnv(t)
	e.create("v", 4096, nil)
	e.bind(6, e.img("v"))
	e.setAutoclear(6) // still mounted somewhere: stays
	start := time.Now()
	if err := e.b.Remove(context.Background(), "v"); !errors.Is(err, sentinel.ErrInUse) {
		t.Fatalf("Remove: %v, want ErrInUse", err)
	}
	if d := time.Since(start); d < e.b.removeGrace {
		t.Errorf("Remove gave up after %v, before the grace %v", d, e.b.removeGrace)
	}
	if !exists(t, e.img("v")) || !exists(t, e.json("v")) {
		t.Error("files deleted")
	}
}

func TestLeftoverImageWithoutRecord(t *testing.T) {
	e := newEnv(t)
	// A Create that crashed after making the image.
	if err := os.WriteFile(e.img("crashed"), []byte("old data"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if list, err := e.b.List(ctx); err != nil || len(list) != 0 {
		t.Errorf("List = %v, %v; want nothing", list, err)
	}
	if _, err := e.b.Get(ctx, "crashed"); !errors.Is(err, sentinel.ErrNotFound) {
		t.Errorf("Get: %v, want ErrNotFound", err)
	}
	if _, err := e.b.Attach(ctx, "crashed", backends.AttachOptions{}); !errors.Is(err, sentinel.ErrNotFound) {
		t.Errorf("Attach: %v, want ErrNotFound", err)
	}
	if err := e.b.Remove(ctx, "crashed"); !errors.Is(err, sentinel.ErrNotFound) {
		t.Errorf("Remove: %v, want ErrNotFound", err)
	}
	e.create("crashed", 8192, nil)
	fi, err := os.Stat(e.img("crashed"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 8192 {
		t.Errorf("image size %d, want 8192", fi.Size())
	}
	data, err := os.ReadFile(e.img("crashed"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), "old data") {
		t.Error("new volume kept the leftover image's data")
	}
	if list, err := e.b.List(ctx); err != nil || len(list) != 1 {
		t.Errorf("List = %v, %v; want the new volume", list, err)
	}
}

func TestLeftoverImageAttached(t *testing.T) {
	e := newEnv(t)
	if err := os.WriteFile(e.img("x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	e.bind(1, e.img("x"))
	_, err := e.b.Create(context.Background(), backends.CreateRequest{Name: "x", SizeBytes: 4096})
	if !errors.Is(err, sentinel.ErrInUse) {
		t.Fatalf("Create over an attached leftover image: %v, want ErrInUse", err)
	}
	if !exists(t, e.img("x")) || exists(t, e.json("x")) {
		t.Error("Create touched the attached leftover image")
	}
}

func TestRecordWithoutImage(t *testing.T) {
	e := newEnv(t)
	e.create("v", 4096, nil)
	if err := os.Remove(e.img("v")); err != nil { // someone deleted it
		t.Fatal(err)
	}
	ctx := context.Background()
	if list, err := e.b.List(ctx); err != nil || len(list) != 0 {
		t.Errorf("List = %v, %v; want nothing", list, err)
	}
	if _, err := e.b.Get(ctx, "v"); !errors.Is(err, sentinel.ErrNotFound) {
		t.Errorf("Get: %v, want ErrNotFound", err)
	}
	if err := e.b.Remove(ctx, "v"); !errors.Is(err, sentinel.ErrNotFound) {
		t.Errorf("Remove: %v, want ErrNotFound", err)
	}
	e.create("v", 8192, nil)
	if v, err := e.b.Get(ctx, "v"); err != nil || v.SizeBytes != 8192 {
		t.Errorf("Get after re-create = %+v, %v", v, err)
	}
}

func TestNewSweepsDebris(t *testing.T) {
	e := newEnv(t)
	e.create("keep", 4096, nil)
	e.create(".hidden", 4096, nil) // a (strange) volume name starting with '.'
	write := func(name string) {
		if err := os.WriteFile(filepath.Join(e.data, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("orphan.img")
	write("busy.img")
	write("stuck.img")
	write(".keep.json.tmp-12345")
	write("unrelated.txt")
	// A device left by a losetup that finished after its plugin was
	// killed: no volume was handed out on it; detached, image removed.
	e.bind(3, e.img("busy"))
	// One that cannot be detached keeps its image.
	e.bind(4, e.img("stuck"))
	e.fake.Expect(
		hostexec.Call{Argv: []string{"losetup", "--detach", "/dev/loop3"}, Do: func() { e.unbind(3) }},
		hostexec.Call{Argv: []string{"losetup", "--detach", "/dev/loop4"}, Code: 1, Stderr: "losetup: /dev/loop4: detach failed: Device or resource busy"},
	)

	e.b = e.open()

	for name, want := range map[string]bool{
		"keep.img": true, "keep.json": true,
		".hidden.img": true, ".hidden.json": true,
		"orphan.img":           false,
		"busy.img":             false,
		"stuck.img":            true, // still attached: left alone
		".keep.json.tmp-12345": false,
		"unrelated.txt":        true,
	} {
		if got := exists(t, filepath.Join(e.data, name)); got != want {
			t.Errorf("%s exists = %v, want %v", name, got, want)
		}
	}
}

func TestListSortedWithDevices(t *testing.T) {
	e := newEnv(t)
	for _, n := range []string{"b", "a-b", "a", "c.d", "a.b"} {
		e.create(n, 4096, map[string]string{"n": n})
	}
	e.bind(9, e.img("a.b"))
	e.bind(11, e.img("c.d"))
	list, err := e.b.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, v := range list {
		names = append(names, v.Name)
		if v.Meta["n"] != v.Name {
			t.Errorf("%s: Meta %v", v.Name, v.Meta)
		}
		wantDev, attached := map[string]string{"a.b": "/dev/loop9", "c.d": "/dev/loop11"}[v.Name]
		if dev, ok := v.Status["device"]; ok != attached || (attached && dev != wantDev) {
			t.Errorf("%s: Status %v, want device %q", v.Name, v.Status, wantDev)
		}
	}
	if want := []string{"a", "a-b", "a.b", "b", "c.d"}; !reflect.DeepEqual(names, want) {
		t.Errorf("List names = %v, want %v", names, want)
	}
}

// A damaged record, or a symlink in its place, never blocks the volume:
// it is listed and described (with the damage), Create of the name says it
// exists, Remove removes it (never what a symlink points to), SetMeta
// writes a sound record again.
func TestDamagedRecordDoesNotBlockTheVolume(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		damage func(e *env, rec string)
	}{
		{"empty", func(e *env, rec string) { writeFile(t, rec, "") }},
		{"truncated", func(e *env, rec string) { writeFile(t, rec, `{"size_bytes":40`) }},
		{"random bytes", func(e *env, rec string) { writeFile(t, rec, "\x93\x00\xffgarbage\x01") }},
		{"zero size", func(e *env, rec string) { writeFile(t, rec, `{"size_bytes":0}`) }},
		{"symlink to a record", func(e *env, rec string) {
			target := filepath.Join(e.root, "elsewhere.json")
			writeFile(t, target, `{"size_bytes":4096,"created_at":"2020-01-01T00:00:00Z"}`)
			mustRemove(t, rec)
			if err := os.Symlink(target, rec); err != nil {
				t.Fatal(err)
			}
		}},
		{"dangling symlink", func(e *env, rec string) {
			mustRemove(t, rec)
			if err := os.Symlink(filepath.Join(e.root, "nowhere"), rec); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.create("good", 4096, nil)
			e.create("bad", 8192, map[string]string{"k": "v"})
			tc.damage(e, e.json("bad"))

			list, err := e.b.List(ctx)
			if err != nil || len(list) != 2 || list[0].Name != "bad" || list[1].Name != "good" {
				t.Fatalf("List = %v, %v; want bad and good", list, err)
			}
			if list[0].Status["damage"] == nil || list[0].SizeBytes != 8192 {
				t.Errorf("List: bad = %+v, want size 8192 and the damage in Status", list[0])
			}
			v, err := e.b.Get(ctx, "bad")
			if err != nil || v.SizeBytes != 8192 {
				t.Fatalf("Get = %+v, %v; want the volume with its image's size", v, err)
			}
			if d, _ := v.Status["damage"].(string); !strings.Contains(d, e.json("bad")) {
				t.Errorf("Get Status %v: want the damage naming the record", v.Status)
			}
			_, err = e.b.Create(ctx, backends.CreateRequest{Name: "bad", SizeBytes: 4096})
			if !errors.Is(err, sentinel.ErrExists) {
				t.Errorf("Create of the name: %v, want ErrExists", err)
			}
			if err := e.b.Remove(ctx, "bad"); err != nil {
				t.Fatalf("Remove: %v", err)
			}
			if exists(t, e.img("bad")) || exists(t, e.json("bad")) {
				t.Error("files left after Remove")
			}
			if target := filepath.Join(e.root, "elsewhere.json"); tc.name == "symlink to a record" && !exists(t, target) {
				t.Error("Remove deleted the symlink's target")
			}
			e.create("bad", 4096, nil)
		})
	}
}

func TestSetMetaRepairsADamagedRecord(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.create("v", 8192, nil)
	writeFile(t, e.json("v"), "")
	if err := e.b.SetMeta(ctx, "v", map[string]string{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	v, err := e.b.Get(ctx, "v")
	if err != nil || v.Status["damage"] != nil || v.SizeBytes != 8192 || v.Meta["k"] != "v" {
		t.Errorf("Get after SetMeta = %+v, %v; want a sound record", v, err)
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func mustRemove(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

// An image deleted while attached is still let go by Detach (Unmount
// must detach what Mount attached); a device of another deleted file is
// not touched.
func TestDetachImageDeletedWhileAttached(t *testing.T) {
	e := newEnv(t)
	e.create("v", 4096, nil)
	e.bind(5, e.img("v")+" (deleted)")
	e.bind(6, e.img("w")+" (deleted)")
	mustRemove(t, e.img("v"))
	e.fake.Expect(hostexec.Call{Argv: []string{"losetup", "--detach", "/dev/loop5"}, Do: func() { e.unbind(5) }})
	if err := e.b.Detach(context.Background(), "v"); err != nil {
		t.Fatal(err)
	}
}

// AttachedHere names every volume whose image, current or deleted, backs
// a loop device, and nothing outside the data directory.
func TestAttachedHere(t *testing.T) {
	e := newEnv(t)
	e.create("a", 4096, nil)
	e.bind(1, e.img("a"))
	e.bind(2, e.img("a"))
	e.bind(3, e.img("gone")+" (deleted)")
	e.bind(4, e.img("norecord"))
	e.bind(5, filepath.Join(e.root, "outside.img"))
	e.bind(6, filepath.Join(e.data, "notes.txt"))
	e.bind(7, filepath.Join(e.data, "sub", "x.img"))
	got, err := e.b.AttachedHere(context.Background())
	if want := []string{"a", "gone", "norecord"}; err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("AttachedHere = %v, %v; want %v", got, err, want)
	}
}

func TestBadNames(t *testing.T) {
	e := newEnv(t) // no program may run
	ctx := context.Background()
	// A sibling of the data directory that a traversal would hit.
	if err := os.WriteFile(filepath.Join(e.root, "victim.json"), []byte(`{"size_bytes":4096}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.root, "victim.img"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{
		"", ".", "..", "../victim", "a/b", "/abs", "x/../../victim", "nul\x00byte", "new\nline",
		strings.Repeat("x", maxNameLen+1),
	} {
		t.Run(fmt.Sprintf("%q", name), func(t *testing.T) {
			check := func(op string, err error) {
				t.Helper()
				if !errors.Is(err, sentinel.ErrInvalid) {
					t.Errorf("%s: %v, want ErrInvalid", op, err)
				}
			}
			_, err := e.b.Create(ctx, backends.CreateRequest{Name: name, SizeBytes: 4096})
			check("Create", err)
			_, err = e.b.Get(ctx, name)
			check("Get", err)
			check("SetMeta", e.b.SetMeta(ctx, name, nil))
			check("Remove", e.b.Remove(ctx, name))
			_, err = e.b.Attach(ctx, name, backends.AttachOptions{})
			check("Attach", err)
			check("Detach", e.b.Detach(ctx, name))
		})
	}
	entries, err := os.ReadDir(e.root)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, en := range entries {
		got = append(got, en.Name())
	}
	if want := []string{"data", "sys", "victim.img", "victim.json"}; !reflect.DeepEqual(got, want) {
		t.Errorf("parent of DataDir holds %v, want %v", got, want)
	}
	if entries, _ := os.ReadDir(e.data); len(entries) != 0 {
		t.Errorf("data dir not empty: %v", entries)
	}
	// The longest allowed name works.
	for range 20 { // the temporary file's random suffix varies in length
		long := strings.Repeat("x", maxNameLen)
		e.create(long, 4096, nil)
		if err := e.b.SetMeta(ctx, long, map[string]string{"k": "v"}); err != nil {
			t.Fatal(err)
		}
		if err := e.b.Remove(ctx, long); err != nil {
			t.Fatal(err)
		}
	}
}

func TestDataDirSymlinkResolved(t *testing.T) {
	e := newEnv(t)
	link := filepath.Join(e.root, "link")
	if err := os.Symlink(e.data, link); err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{DataDir: link, SysRoot: e.sys}, e.fake, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Create(context.Background(), backends.CreateRequest{Name: "v", SizeBytes: 4096}); err != nil {
		t.Fatal(err)
	}
	// sysfs reports the resolved path; the backend must match it.
	e.bind(2, e.img("v"))
	if dev, err := b.Attach(context.Background(), "v", backends.AttachOptions{}); err != nil || dev != "/dev/loop2" {
		t.Errorf("Attach = %q, %v", dev, err)
	}
}

func TestCanceledContext(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := e.b.Create(ctx, backends.CreateRequest{Name: "v", SizeBytes: 4096}); !errors.Is(err, context.Canceled) {
		t.Errorf("Create: %v, want context.Canceled", err)
	}
	if exists(t, e.img("v")) {
		t.Error("canceled Create made an image")
	}
}

func TestLoopNumber(t *testing.T) {
	for in, want := range map[string]int{"loop0": 0, "loop12": 12, "loop": -1, "loop0p1": -1, "vda": -1, "loopx": -1} {
		n, ok := loopNumber(in)
		if (want < 0) == ok || (ok && n != want) {
			t.Errorf("loopNumber(%q) = %d, %v", in, n, ok)
		}
	}
}

func TestConcurrentCreates(t *testing.T) {
	e := newEnv(t)
	const n = 8
	errs := make(chan error, 2*n)
	var wg sync.WaitGroup
	for i := range 2 * n { // every name twice
		wg.Go(func() {
			_, err := e.b.Create(context.Background(), backends.CreateRequest{Name: fmt.Sprintf("v%d", i%n), SizeBytes: 4096})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	var ok, dup int
	for err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, sentinel.ErrExists):
			dup++
		default:
			t.Error(err)
		}
	}
	if ok != n || dup != n {
		t.Errorf("%d created, %d ErrExists; want %d each", ok, dup, n)
	}
	list, err := e.b.List(context.Background())
	if err != nil || len(list) != n {
		t.Errorf("List: %d volumes, %v", len(list), err)
	}
}

func TestListCanceled(t *testing.T) {
	e := newEnv(t)
	e.create("v", 4096, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := e.b.List(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("List: %v, want context.Canceled", err)
	}
}

// A device whose detach is still pending must never be handed out: it
// vanishes when the process holding it open lets go.
func TestAttachNeverReturnsDeviceBeingDetached(t *testing.T) {
	e := newEnv(t)
	e.create("v", 4096, nil)
	e.bind(4, e.img("v"))
	e.setAutoclear(4) // detached while udev still had it open
	e.fake.Expect(hostexec.Call{
		Argv:   []string{"losetup", "--find", "--show", e.img("v")},
		Stdout: "/dev/loop6\n",
		Do:     func() { e.bind(6, e.img("v")) },
	})
	dev, err := e.b.Attach(context.Background(), "v", backends.AttachOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if dev != "/dev/loop6" {
		t.Fatalf("Attach = %q; want a fresh device, not the dying /dev/loop4", dev)
	}
}

func TestAttachWaitsForPendingDetachToFinish(t *testing.T) {
	e := newEnv(t)
	e.create("v", 4096, nil)
	e.bind(4, e.img("v"))
	e.setAutoclear(4)
	// The holder closes it 20 ms later and the kernel frees it: the loop
	// directory vanishes at once (a rename, so the poller never sees it
	// half removed).
	loopDir := filepath.Join(e.sys, "block", "loop4", "loop")
	freed := make(chan error, 1)
	go func() {
		time.Sleep(20 * time.Millisecond)
		freed <- os.Rename(loopDir, filepath.Join(e.root, "freed-loop4"))
	}()
	e.fake.Expect(hostexec.Call{
		Argv:   []string{"losetup", "--find", "--show", "--nooverlap", e.img("v")},
		Stdout: "/dev/loop4\n",
		Do:     func() { e.bind(4, e.img("v")) },
	})
	dev, err := e.b.Attach(context.Background(), "v", backends.AttachOptions{})
	if err != nil || dev != "/dev/loop4" {
		t.Fatalf("Attach = %q, %v", dev, err)
	}
	if err := <-freed; err != nil {
		t.Fatal(err)
	}
}
