package csi_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blockvol/blockvol/internal/sentinel"
	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/docker/go-plugins-helpers/volume"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// client is a CSI client of a host's socket.
type client struct {
	csipb.ControllerClient
	csipb.NodeClient
}

func (h *host) client() client {
	h.t.Helper()
	conn, err := grpc.NewClient(h.endpoint(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { conn.Close() })
	return client{csipb.NewControllerClient(conn), csipb.NewNodeClient(conn)}
}

var mountCap = &csipb.VolumeCapability{
	AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{}},
	AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}

func wantCode(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s = %v; want %s", what, err, code)
	}
}

// mounts counts this host's users of a volume as Docker's Get reports them.
func (h *host) mounts(name string) int {
	h.t.Helper()
	res, err := h.docker.Get(&volume.GetRequest{Name: name})
	if err != nil {
		h.t.Fatal(err)
	}
	n, _ := res.Volume.Status["mounts"].(int)
	return n
}

// loops counts the loop devices of the host's data directory.
func (h *host) loops() int {
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	n := 0
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil && strings.HasPrefix(strings.TrimSpace(string(b)), h.data+"/") {
			n++
		}
	}
	return n
}

// noLoopsLeft waits until the host's data directory backs no loop device:
// the kernel completes a detach asynchronously.
func (h *host) noLoopsLeft() bool {
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for h.loops() > 0 {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}

// TestOneVolumeTwoDoors: a volume created by Docker is staged and
// published by CSI and mounted by Docker at once; both doors count their
// users in the same records, neither may remove it while the other uses
// it, and a kill -9 in between keeps every user that survived (a publish
// whose bind mount vanished meanwhile is dropped).
func TestOneVolumeTwoDoors(t *testing.T) {
	h := newHost(t)
	ctx := context.Background()
	const name = "bvcsi-shared"
	if err := h.docker.Create(&volume.CreateRequest{Name: name, Options: map[string]string{"size": "64M"}}); err != nil {
		t.Fatal(err)
	}
	c := h.client()
	list, err := c.ListVolumes(ctx, &csipb.ListVolumesRequest{})
	if err != nil || len(list.Entries) != 1 || list.Entries[0].Volume.VolumeId != name || list.Entries[0].Volume.CapacityBytes != 64<<20 {
		t.Fatalf("ListVolumes after docker volume create = %v, %v", list, err)
	}

	staging := filepath.Join(h.root, "bvcsi-staging")
	target := filepath.Join(h.root, "bvcsi-pods", "p1")
	target2 := filepath.Join(h.root, "bvcsi-pods", "p2")
	if err := os.Mkdir(staging, 0o750); err != nil {
		t.Fatal(err)
	}
	if _, err := c.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: name, StagingTargetPath: staging, VolumeCapability: mountCap}); err != nil {
		t.Fatal(err)
	}
	for _, tp := range []string{target, target2} {
		ro := tp == target2
		if _, err := c.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: name, StagingTargetPath: staging, TargetPath: tp, VolumeCapability: mountCap, Readonly: ro}); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(target2, "x"), []byte("x"), 0o644); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write through a read-only publish = %v; want EROFS", err)
	}
	_, err = c.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: name, StagingTargetPath: staging, TargetPath: target2, VolumeCapability: mountCap})
	wantCode(t, "NodePublish read-write at a read-only target", err, codes.AlreadyExists)
	res, err := h.docker.Mount(&volume.MountRequest{Name: name, ID: strings.Repeat("d", 64)})
	if err != nil {
		t.Fatal(err)
	}
	// One filesystem seen through every door.
	if err := os.WriteFile(filepath.Join(target, "from-csi"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(res.Mountpoint, "from-csi")); err != nil {
		t.Fatalf("a file written through CSI's target is not in Docker's mount: %v", err)
	}
	if n := h.mounts(name); n != 4 {
		t.Fatalf("users = %d; want 4 (stage, two publishes, one container)", n)
	}
	if n := h.loops(); n != 1 {
		t.Fatalf("%d loop devices for one volume used by both doors", n)
	}
	_, err = c.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: name})
	wantCode(t, "DeleteVolume of a volume in use", err, codes.FailedPrecondition)
	if err := h.docker.Remove(&volume.RemoveRequest{Name: name}); !errors.Is(err, sentinel.ErrInUse) {
		t.Fatalf("docker volume rm of a volume CSI uses = %v; want in use", err)
	}

	// kill -9; meanwhile the second pod's bind mount went away (its
	// kubelet cleaned up by hand, say).
	h.kill()
	if err := exec.Command("umount", target2).Run(); err != nil {
		t.Fatal(err)
	}
	h.start()
	c = h.client()
	if n := h.mounts(name); n != 3 {
		t.Fatalf("users after kill -9 and restart = %d; want 3 (the vanished publish dropped)", n)
	}
	if b, err := os.ReadFile(filepath.Join(res.Mountpoint, "from-csi")); err != nil || string(b) != "x" {
		t.Fatalf("Docker's mount after the restart: %q, %v", b, err)
	}

	// CSI leaves; Docker's container keeps the volume.
	for _, tp := range []string{target, target2} {
		if _, err := c.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: name, TargetPath: tp}); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(tp); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("target %s left after NodeUnpublish: %v", tp, err)
		}
	}
	if _, err := c.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: name, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(res.Mountpoint, "from-csi")); err != nil {
		t.Fatalf("CSI's unstage took the volume from the container: %v", err)
	}
	if err := h.docker.Unmount(&volume.UnmountRequest{Name: name, ID: strings.Repeat("d", 64)}); err != nil {
		t.Fatal(err)
	}
	if !h.noLoopsLeft() {
		t.Fatalf("%d loop devices left after every user left", h.loops())
	}
	if _, err := c.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: name}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.docker.Get(&volume.GetRequest{Name: name}); !errors.Is(err, sentinel.ErrNotFound) {
		t.Fatalf("docker volume inspect after CSI's DeleteVolume = %v; want not found", err)
	}
}

// TestKillDuringCSIUseRecovers: kill -9 with a raw block volume staged and
// published and a filesystem volume staged only; after a restart both are
// kept (their mounts are there), and they are released cleanly. A second
// kill after the mounts vanished (a reboot) releases everything.
func TestKillDuringCSIUseRecovers(t *testing.T) {
	h := newHost(t)
	ctx := context.Background()
	c := h.client()
	blockCap := &csipb.VolumeCapability{
		AccessType: &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}},
		AccessMode: mountCap.AccessMode,
	}
	for _, n := range []string{"bvcsi-blk", "bvcsi-fs"} {
		if _, err := c.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: n, VolumeCapabilities: []*csipb.VolumeCapability{mountCap}, CapacityRange: &csipb.CapacityRange{RequiredBytes: 32 << 20}}); err != nil {
			t.Fatal(err)
		}
	}
	stBlk, stFS := filepath.Join(h.root, "bvcsi-st-blk"), filepath.Join(h.root, "bvcsi-st-fs")
	tgtBlk := filepath.Join(h.root, "bvcsi-pods", "blk")
	for _, d := range []string{stBlk, stFS} {
		if err := os.Mkdir(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "bvcsi-blk", StagingTargetPath: stBlk, VolumeCapability: blockCap}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: "bvcsi-blk", StagingTargetPath: stBlk, TargetPath: tgtBlk, VolumeCapability: blockCap}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "bvcsi-fs", StagingTargetPath: stFS, VolumeCapability: mountCap}); err != nil {
		t.Fatal(err)
	}
	// The block volume is a raw device: Docker cannot mount it meanwhile.
	if _, err := h.docker.Mount(&volume.MountRequest{Name: "bvcsi-blk", ID: strings.Repeat("e", 64)}); !errors.Is(err, sentinel.ErrInUse) {
		t.Fatalf("docker mount of a volume CSI uses as a raw block device = %v; want in use", err)
	}

	h.kill()
	h.start()
	c = h.client()
	if n := h.mounts("bvcsi-blk"); n != 2 {
		t.Fatalf("block volume users after restart = %d; want 2", n)
	}
	if n := h.mounts("bvcsi-fs"); n != 1 {
		t.Fatalf("fs volume users after restart = %d; want 1", n)
	}
	if fi, err := os.Stat(tgtBlk); err != nil || fi.Mode()&os.ModeDevice == 0 {
		t.Fatalf("published block target after restart: %v, %v", fi, err)
	}

	// A reboot takes every mount (and loop device) away: the next start
	// releases everything.
	h.kill()
	for _, p := range []string{tgtBlk, filepath.Join(stBlk, "blockvol-device"), stFS} {
		if err := exec.Command("umount", p).Run(); err != nil {
			t.Fatalf("umount %s: %v", p, err)
		}
	}
	h.start()
	for _, n := range []string{"bvcsi-blk", "bvcsi-fs"} {
		if got := h.mounts(n); got != 0 {
			t.Fatalf("%s: %d users after the mounts vanished; want none", n, got)
		}
	}
	if !h.noLoopsLeft() {
		t.Fatalf("%d loop devices left after recovery released everything", h.loops())
	}
}

// TestRawBlockDataIsNeverFormatted: a fresh volume handed out as a raw
// block device holds its user's data from then on; a later use as a
// filesystem mounts what the user made and never formats it.
func TestRawBlockDataIsNeverFormatted(t *testing.T) {
	h := newHost(t)
	ctx := context.Background()
	c := h.client()
	const name = "bvcsi-raw"
	blockCap := &csipb.VolumeCapability{
		AccessType: &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}},
		AccessMode: mountCap.AccessMode,
	}
	if _, err := c.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csipb.VolumeCapability{blockCap}, CapacityRange: &csipb.CapacityRange{RequiredBytes: 32 << 20}}); err != nil {
		t.Fatal(err)
	}
	st, tgt := filepath.Join(h.root, "bvcsi-st"), filepath.Join(h.root, "bvcsi-pods", "raw")
	if err := os.Mkdir(st, 0o750); err != nil {
		t.Fatal(err)
	}
	if _, err := c.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: name, StagingTargetPath: st, VolumeCapability: blockCap}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: name, StagingTargetPath: st, TargetPath: tgt, VolumeCapability: blockCap}); err != nil {
		t.Fatal(err)
	}
	// The user makes a filesystem of its own (with its lost+found).
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", tgt).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 on the published device: %v\n%s", err, out)
	}
	if _, err := c.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: name, TargetPath: tgt}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: name, StagingTargetPath: st}); err != nil {
		t.Fatal(err)
	}
	mp, err := h.core.Use(ctx, name, strings.Repeat("f", 64))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(mp, "lost+found")); err != nil {
		t.Fatalf("the user's filesystem was formatted over at its first use as a filesystem: %v", err)
	}
	if err := h.core.Release(ctx, name, strings.Repeat("f", 64)); err != nil {
		t.Fatal(err)
	}
}
