package cinder

import (
	"context"
	"errors"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/iscsi"
)

// TestCloudSnapshotCloneExtend against the real Cinder: a snapshot of a
// volume, a larger clone of it and a clone of the volume (source_volid),
// the extend of an available volume, and the extend of a volume in use
// (microversion 3.42, no Nova): Cinder grows it, and the LUN a fresh
// session reads (iscsi-readcapacity16) has the new size.
func TestCloudSnapshotCloneExtend(t *testing.T) {
	requireCloud(t)
	var target iscsi.Target
	ini := &fakeInitiator{name: "iqn.2024-01.test:bvsnap", onAttach: func(_ context.Context, tg iscsi.Target) error { target = tg; return nil }}
	b := newCloudBackend(t, adminConfig("bvsnap-host", AttachAuto), ini)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	src, clone, vclone := volName(t), volName(t)+"-c", volName(t)+"-v"
	snap := volName(t) + "-s"
	for _, n := range []string{src, clone, vclone} {
		mustRemove(t, b, n)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := b.RemoveSnapshot(ctx, snap); err != nil && !errors.Is(err, sentinel.ErrNotFound) {
			t.Errorf("cleanup of snapshot %s: %v", snap, err)
		}
	})
	if _, err := b.Create(ctx, backends.CreateRequest{Name: src, SizeBytes: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	s, err := b.CreateSnapshot(ctx, src, snap)
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != snap || s.Volume != src || s.SizeBytes != 1<<30 || s.Status["status"] != "available" {
		t.Fatalf("snapshot %+v", s)
	}
	if _, err := b.CreateSnapshot(ctx, src, snap); !errors.Is(err, sentinel.ErrExists) {
		t.Fatalf("second snapshot of one name = %v", err)
	}
	list, err := b.ListSnapshots(ctx, src)
	if err != nil || len(list) != 1 || list[0].Name != snap {
		t.Fatalf("ListSnapshots = %+v, %v", list, err)
	}

	c, err := b.CreateFrom(ctx, backends.CreateRequest{Name: clone, SizeBytes: 2 << 30, Meta: map[string]string{"k": "v"}}, backends.Source{Snapshot: snap})
	if err != nil {
		t.Fatal(err)
	}
	if c.SizeBytes != 2<<30 || c.Meta["k"] != "v" || cinderVolume(t, b, clone).SnapshotID != s.Status["id"] {
		t.Fatalf("clone of the snapshot %+v", c)
	}
	if _, err := b.CreateFrom(ctx, backends.CreateRequest{Name: vclone, SizeBytes: 1 << 30}, backends.Source{Volume: src}); err != nil {
		t.Fatal(err)
	}
	if got := cinderVolume(t, b, vclone).SourceVolID; got != cinderVolume(t, b, src).ID {
		t.Fatalf("the clone of a volume has source_volid %q", got)
	}

	if v, err := b.Expand(ctx, clone, 3<<30); err != nil || v.SizeBytes != 3<<30 {
		t.Fatalf("extend of an available volume = %+v, %v", v, err)
	}
	if _, err := b.Expand(ctx, clone, 1<<30); !errors.Is(err, sentinel.ErrInvalid) {
		t.Fatalf("shrink = %v", err)
	}

	// In use: attached to this (fake) host, extended under it.
	if _, err := b.Attach(ctx, src, backends.AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Detach(context.Background(), src) })
	v, err := b.Expand(ctx, src, 2<<30)
	if err != nil {
		t.Fatal(err)
	}
	if v.SizeBytes != 2<<30 || v.Status["status"] != "in-use" {
		t.Fatalf("extend in use = %+v", v)
	}
	if got := lunBytes(t, ini.name, target); got != 2<<30 {
		t.Fatalf("the LUN of the extended volume reads %d bytes", got)
	}
	ini.mu.Lock()
	defer ini.mu.Unlock()
	if len(ini.rescanned) != 1 || ini.rescanned[0].IQN != target.IQN || ini.rescanned[0].LUN != target.LUN {
		t.Fatalf("rescans %+v; want one of %s LUN %d", ini.rescanned, target.IQN, target.LUN)
	}
}

// lunBytes reads a LUN's capacity with a fresh session (iscsi-readcapacity16).
func lunBytes(t *testing.T, name string, tg iscsi.Target) int64 {
	t.Helper()
	cred := ""
	if tg.CHAP != nil {
		cred = tg.CHAP.Username + "%" + tg.CHAP.Password + "@"
	}
	u := "iscsi://" + cred + tg.Portals[0] + "/" + tg.IQN + "/" + strconv.Itoa(tg.LUN)
	out, err := exec.Command("iscsi-readcapacity16", "-i", name, u).CombinedOutput()
	if err != nil {
		t.Fatalf("iscsi-readcapacity16: %v\n%s", err, out)
	}
	var lba, blk int64
	for _, line := range strings.Split(string(out), "\n") {
		k, v, _ := strings.Cut(line, ":")
		n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch k {
		case "RETURNED LOGICAL BLOCK ADDRESS":
			lba = n
		case "LOGICAL BLOCK LENGTH IN BYTES":
			blk = n
		}
	}
	return (lba + 1) * blk
}
