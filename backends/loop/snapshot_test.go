package loop

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/internal/sentinel"
)

// A snapshot is a copy of the image as it was (holes kept), a clone of it
// is the copy lengthened, and both say how they were copied.
func TestSnapshotAndCloneCopyTheData(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	if _, err := e.b.Create(ctx, backends.CreateRequest{Name: "v", SizeBytes: 64 * mib}); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("bvsnap"), 1000)
	writeAt(t, e.img("v"), data, 32*mib)
	s, err := e.b.CreateSnapshot(ctx, "v", "s")
	if err != nil {
		t.Fatal(err)
	}
	if s.Volume != "v" || s.SizeBytes != 64*mib || s.Status["copy"] != e.b.copies {
		t.Fatalf("snapshot %+v", s)
	}
	writeAt(t, e.img("v"), []byte("later"), 32*mib) // after the snapshot
	if _, err := e.b.CreateSnapshot(ctx, "v", "s"); !errors.Is(err, sentinel.ErrExists) {
		t.Fatalf("second snapshot of one name = %v", err)
	}
	c, err := e.b.CreateFrom(ctx, backends.CreateRequest{Name: "c", SizeBytes: 128 * mib}, backends.Source{Snapshot: "s"})
	if err != nil {
		t.Fatal(err)
	}
	if c.SizeBytes != 128*mib || c.Status["copy"] != e.b.copies {
		t.Fatalf("clone %+v", c)
	}
	got := readAt(t, e.img("c"), len(data), 32*mib)
	if !bytes.Equal(got, data) {
		t.Fatalf("the clone holds %q..., not the data at the snapshot", got[:12])
	}
	if fi, _ := os.Stat(e.img("c")); fi.Size() != 128*mib {
		t.Fatalf("clone image is %d bytes", fi.Size())
	}
	if _, err := e.b.CreateFrom(ctx, backends.CreateRequest{Name: "small", SizeBytes: 32 * mib}, backends.Source{Volume: "v"}); !errors.Is(err, sentinel.ErrInvalid) {
		t.Fatalf("a clone smaller than its source = %v", err)
	}
	if _, err := e.b.CreateFrom(ctx, backends.CreateRequest{Name: "x", SizeBytes: 64 * mib}, backends.Source{Snapshot: "nope"}); !errors.Is(err, sentinel.ErrNotFound) {
		t.Fatalf("a clone of a missing snapshot = %v", err)
	}
	if err := e.b.RemoveSnapshot(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	if err := e.b.RemoveSnapshot(ctx, "s"); !errors.Is(err, sentinel.ErrNotFound) {
		t.Fatalf("second remove = %v", err)
	}
}

// An image without a record (a snapshot interrupted by a crash) is swept
// at start; a damaged record neither hides its snapshot nor stops the
// others: the first read sets it aside (renamed S.json.damaged-<time>, one
// ERROR line), the snapshot is listed with the image's size and the
// damage, its image survives the next start's sweep, its name cannot be
// taken again until it is removed, and it is removable (the set-aside
// record stays for inspection).
func TestSnapshotDebrisAndDamage(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	if _, err := e.b.Create(ctx, backends.CreateRequest{Name: "v", SizeBytes: 64 * mib}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"good", "bad"} {
		if _, err := e.b.CreateSnapshot(ctx, "v", n); err != nil {
			t.Fatal(err)
		}
	}
	snaps := filepath.Join(e.data, snapDirName)
	if err := os.WriteFile(filepath.Join(snaps, "torn.img"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(snaps, "bad.json"), []byte("{garbled"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	e.b = e.open()
	e.b.log = slog.New(slog.NewTextHandler(&logs, nil))
	if _, err := os.Stat(filepath.Join(snaps, "torn.img")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("debris image still there: %v", err)
	}
	listed := func() []backends.Snapshot {
		t.Helper()
		list, err := e.b.ListSnapshots(ctx, "")
		if err != nil || len(list) != 2 {
			t.Fatalf("ListSnapshots = %+v, %v", list, err)
		}
		bad := list[0]
		if bad.Name != "bad" || bad.SizeBytes != 64*mib || !strings.Contains(bad.Status["damage"].(string), "damaged") {
			t.Fatalf("damaged snapshot listed as %+v", bad)
		}
		if list[1].Name != "good" || list[1].Volume != "v" {
			t.Fatalf("good snapshot listed as %+v", list[1])
		}
		return list
	}
	list := listed()
	aside, _ := filepath.Glob(filepath.Join(snaps, "bad.json.damaged-*"))
	if _, err := os.Lstat(filepath.Join(snaps, "bad.json")); !errors.Is(err, os.ErrNotExist) || len(aside) != 1 {
		t.Fatalf("damaged record not set aside: %v, %v", err, aside)
	}
	if !strings.Contains(list[0].Status["damage"].(string), aside[0]) {
		t.Fatalf("damage %q does not say where the record went", list[0].Status["damage"])
	}
	e.b = e.open() // the next start's sweep: the image is no debris
	e.b.log = slog.New(slog.NewTextHandler(&logs, nil))
	listed()
	if got, err := e.b.GetSnapshot(ctx, "bad"); err != nil || got.SizeBytes != 64*mib {
		t.Fatalf("GetSnapshot = %+v, %v", got, err)
	}
	if n := strings.Count(logs.String(), "level=ERROR"); n != 1 || !strings.Contains(logs.String(), "set_aside_as="+aside[0]) {
		t.Fatalf("%d ERROR lines; want one naming %s:\n%s", n, aside[0], logs.String())
	}
	if _, err := e.b.CreateSnapshot(ctx, "v", "bad"); !errors.Is(err, sentinel.ErrExists) {
		t.Fatalf("snapshot over a damaged one = %v", err)
	}
	if fi, err := os.Stat(filepath.Join(snaps, "bad.img")); err != nil || fi.Size() != 64*mib {
		t.Fatalf("the damaged snapshot's image: %v, %v", fi, err)
	}
	if err := e.b.RemoveSnapshot(ctx, "bad"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.b.GetSnapshot(ctx, "bad"); !errors.Is(err, sentinel.ErrNotFound) {
		t.Fatalf("GetSnapshot after remove = %v", err)
	}
	if _, err := os.Stat(aside[0]); err != nil {
		t.Fatalf("the set-aside record is gone: %v", err)
	}
	logs.Reset()
	if list, err := e.b.ListSnapshots(ctx, ""); err != nil || len(list) != 1 {
		t.Fatalf("ListSnapshots after remove = %+v, %v", list, err)
	}
	if logs.Len() != 0 {
		t.Fatalf("listing beside a removed snapshot's set-aside record logged:\n%s", logs.String())
	}
}

// Expand lengthens the image and the record; a smaller size is refused.
func TestExpand(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	if _, err := e.b.Create(ctx, backends.CreateRequest{Name: "v", SizeBytes: 64 * mib}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.b.Expand(ctx, "v", 32*mib); !errors.Is(err, sentinel.ErrInvalid) {
		t.Fatalf("shrink = %v", err)
	}
	v, err := e.b.Expand(ctx, "v", 96*mib)
	if err != nil || v.SizeBytes != 96*mib {
		t.Fatalf("Expand = %+v, %v", v, err)
	}
	if fi, _ := os.Stat(e.img("v")); fi.Size() != 96*mib {
		t.Fatalf("image is %d bytes", fi.Size())
	}
	if got, _ := e.b.Get(ctx, "v"); got.SizeBytes != 96*mib {
		t.Fatalf("Get after Expand = %+v", got)
	}
}

// Expand of an attached volume tells its loop device the new capacity.
func TestExpandAttachedSetsCapacity(t *testing.T) {
	e := newEnv(t, hostexec.Call{Argv: []string{"losetup", "--set-capacity", "/dev/loop0"}})
	ctx := t.Context()
	if _, err := e.b.Create(ctx, backends.CreateRequest{Name: "v", SizeBytes: 64 * mib}); err != nil {
		t.Fatal(err)
	}
	e.bind(0, e.img("v"))
	if _, err := e.b.Expand(ctx, "v", 96*mib); err != nil {
		t.Fatal(err)
	}
}

func writeAt(t *testing.T, path string, data []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
}

func readAt(t *testing.T, path string, n int, off int64) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}
