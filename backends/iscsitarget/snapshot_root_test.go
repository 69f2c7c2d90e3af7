package iscsitarget

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/sentinel"
)

// TestRealSnapshotAndClone against a real tgtd: a snapshot keeps the
// backing file as it was; a larger clone of it is a volume of its own,
// exported, whose LUN an initiator reads at the clone's size; a clone of a
// volume copies it as it is; snapshots are listed and removed.
func TestRealSnapshotAndClone(t *testing.T) {
	r := newRealEnv(t)
	a := r.agent(nil, "bvsnap-node", initA, true, nil)
	ctx := context.Background()
	const vol, snap, clone, vclone = "bvsnap-v", "bvsnap-s", "bvsnap-c", "bvsnap-vc"
	for _, n := range []string{vclone, clone, vol} {
		t.Cleanup(func() { _ = a.b.Detach(context.Background(), n); _ = a.b.Remove(context.Background(), n) })
	}
	t.Cleanup(func() { _ = a.b.RemoveSnapshot(context.Background(), snap) })
	if _, err := a.b.Create(ctx, backends.CreateRequest{Name: vol, SizeBytes: 64 * mib}); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("bvsnap"), 1000)
	poke(t, filepath.Join(r.pool, vol+".img"), data)
	s, err := a.b.CreateSnapshot(ctx, vol, snap)
	if err != nil {
		t.Fatal(err)
	}
	if s.Volume != vol || s.SizeBytes != 64*mib {
		t.Fatalf("snapshot %+v", s)
	}
	if _, err := a.b.CreateSnapshot(ctx, vol, snap); !errors.Is(err, sentinel.ErrExists) {
		t.Fatalf("second snapshot of one name = %v", err)
	}
	poke(t, filepath.Join(r.pool, vol+".img"), []byte("after the snapshot"))

	c, err := a.b.CreateFrom(ctx, backends.CreateRequest{Name: clone, SizeBytes: 96 * mib}, backends.Source{Snapshot: snap})
	if err != nil {
		t.Fatal(err)
	}
	if c.SizeBytes != 96*mib {
		t.Fatalf("clone %+v", c)
	}
	if got := peek(t, filepath.Join(r.pool, clone+".img"), len(data)); !bytes.Equal(got, data) {
		t.Fatalf("the clone holds %q..., not the data at the snapshot", got[:12])
	}
	if _, err := a.b.Attach(ctx, clone, backends.AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	r.wantCapacity(initA, realPrefix+":"+clone, 96*mib)

	if _, err := a.b.CreateFrom(ctx, backends.CreateRequest{Name: vclone, SizeBytes: 64 * mib}, backends.Source{Volume: vol}); err != nil {
		t.Fatal(err)
	}
	if got := peek(t, filepath.Join(r.pool, vclone+".img"), 18); string(got) != "after the snapshot" {
		t.Fatalf("the clone of the volume holds %q", got)
	}
	if _, err := a.b.CreateFrom(ctx, backends.CreateRequest{Name: "bvsnap-small", SizeBytes: 32 * mib}, backends.Source{Volume: vol}); !errors.Is(err, sentinel.ErrInvalid) {
		t.Fatalf("a clone smaller than its source = %v", err)
	}
	list, err := a.b.ListSnapshots(ctx, vol)
	if err != nil || len(list) != 1 || list[0].Name != snap {
		t.Fatalf("ListSnapshots = %+v, %v", list, err)
	}
	if err := a.b.RemoveSnapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	if _, err := a.b.GetSnapshot(ctx, snap); !errors.Is(err, sentinel.ErrNotFound) {
		t.Fatalf("Get of a removed snapshot = %v", err)
	}
}

func poke(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
}

func peek(t *testing.T, path string, n int) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRealDamagedSnapshotRecord with the real helper on this host: a
// garbled snapshot record is renamed aside (.damaged-<time>) by the first
// listing; the image stays, the snapshot is listed damaged by this and by
// a fresh backend, its name is refused to a new snapshot, and it is
// removable, the set-aside record kept.
func TestRealDamagedSnapshotRecord(t *testing.T) {
	r := newRealEnv(t)
	a := r.agent(nil, "bvsnap-node", initA, true, nil)
	ctx := context.Background()
	const vol, snap = "bvsnap-dv", "bvsnap-ds"
	t.Cleanup(func() { _ = a.b.Remove(context.Background(), vol) })
	if _, err := a.b.Create(ctx, backends.CreateRequest{Name: vol, SizeBytes: 64 * mib}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.b.CreateSnapshot(ctx, vol, snap); err != nil {
		t.Fatal(err)
	}
	sdir := filepath.Join(r.pool, snapSubdir)
	if err := os.WriteFile(filepath.Join(sdir, snap+".json"), []byte("{garbled"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i, b := range []*Backend{a.b, r.agent(nil, "bvsnap-node", initA, true, nil).b} {
		list, err := b.ListSnapshots(ctx, "")
		if err != nil || len(list) != 1 || list[0].Name != snap || !strings.Contains(fmt.Sprint(list[0].Status["damage"]), "set aside as "+sdir+"/"+snap+".json.damaged-") {
			t.Fatalf("listing %d: ListSnapshots = %+v, %v", i, list, err)
		}
	}
	aside, _ := filepath.Glob(filepath.Join(sdir, snap+".json.damaged-*"))
	if _, err := os.Lstat(filepath.Join(sdir, snap+".json")); !errors.Is(err, os.ErrNotExist) || len(aside) != 1 {
		t.Fatalf("record not set aside: %v, %v", err, aside)
	}
	if fi, err := os.Stat(filepath.Join(sdir, snap+".img")); err != nil || fi.Size() != 64*mib {
		t.Fatalf("the damaged snapshot's image: %v, %v", fi, err)
	}
	if _, err := a.b.CreateSnapshot(ctx, vol, snap); !errors.Is(err, sentinel.ErrExists) {
		t.Fatalf("a snapshot over the damaged one = %v", err)
	}
	if err := a.b.RemoveSnapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	if _, err := a.b.GetSnapshot(ctx, snap); !errors.Is(err, sentinel.ErrNotFound) {
		t.Fatalf("Get of a removed snapshot = %v", err)
	}
	if _, err := os.Stat(aside[0]); err != nil {
		t.Fatalf("the set-aside record: %v", err)
	}
}
