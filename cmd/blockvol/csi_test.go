package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blockvol/blockvol/internal/testenv"
	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/docker/go-plugins-helpers/volume"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// TestServeCSIKill9: the real program with --csi-endpoint serves CSI on a
// 0600 socket beside the plugin socket, with the host UUID as node id; a
// volume created through Docker's door is staged through CSI and mounted
// through Docker's; after kill -9 and a restart both users are still
// counted, and each door releases its own.
func TestServeCSIKill9(t *testing.T) {
	testenv.RequireRoot(t)
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		testenv.Skip(t, "mkfs.ext4 not installed")
	}
	dir, err := os.MkdirTemp("", "bvcsi-serve-")
	if err != nil {
		t.Fatal(err)
	}
	cfgPath, sock := testConfig(t, dir, "")
	csiSock := filepath.Join(dir, "csi.sock")
	staging := filepath.Join(dir, "bvcsi-staging")
	t.Cleanup(func() {
		exec.Command("umount", staging).Run()
		exec.Command("umount", filepath.Join(dir, "state", "mounts", "bvcsi-k9")).Run()
		exec.Command("sh", "-c", "for f in /sys/block/loop*/loop/backing_file; do grep -q '^"+dir+"/' $f && losetup -d /dev/$(basename $(dirname $(dirname $f))); done").Run()
		os.RemoveAll(dir)
	})
	start := func() *child {
		c := startBlockvol(t, filepath.Join(dir, "blockvol.log"), nil, nil, "serve", "--config", cfgPath, "--csi-endpoint", "unix://"+csiSock)
		waitAnswer(t, sock, c)
		return c
	}
	c := start()
	fi, err := os.Stat(csiSock)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("csi socket: %v, %v; want a 0600 socket", fi, err)
	}
	conn, err := grpc.NewClient("unix://"+csiSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	info, err := csipb.NewNodeClient(conn).NodeGetInfo(ctx, &csipb.NodeGetInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	uuid, _ := os.ReadFile(filepath.Join(dir, "state", "host-uuid"))
	if info.NodeId == "" || info.NodeId != strings.TrimSpace(string(uuid)) {
		t.Fatalf("node id %q; want the host UUID %q", info.NodeId, uuid)
	}

	cli := newPluginClient(sock)
	const name, id = "bvcsi-k9", "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk"
	if err := cli.call(ctx, "VolumeDriver.Create", volume.CreateRequest{Name: name, Options: map[string]string{"size": "64M"}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(staging, 0o750); err != nil {
		t.Fatal(err)
	}
	mountCap := &csipb.VolumeCapability{
		AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{}},
		AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
	node := csipb.NewNodeClient(conn)
	if _, err := node.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: name, StagingTargetPath: staging, VolumeCapability: mountCap}); err != nil {
		t.Fatal(err)
	}
	if err := cli.call(ctx, "VolumeDriver.Mount", volume.MountRequest{Name: name, ID: id}, nil); err != nil {
		t.Fatal(err)
	}

	_ = syscall.Kill(c.cmd.Process.Pid, syscall.SIGKILL)
	<-c.done
	c = start()
	defer c.stop(t)
	mounts := func() any {
		var res volume.GetResponse
		if err := cli.call(ctx, "VolumeDriver.Get", volume.GetRequest{Name: name}, &res); err != nil {
			t.Fatal(err)
		}
		return res.Volume.Status["mounts"]
	}
	if got := mounts(); got != float64(2) {
		t.Fatalf("users after kill -9 and restart = %v; want 2 (CSI's staging, Docker's container)", got)
	}
	if _, err := node.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: name, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	if err := cli.call(ctx, "VolumeDriver.Unmount", volume.UnmountRequest{Name: name, ID: id}, nil); err != nil {
		t.Fatal(err)
	}
	if got := mounts(); got != nil {
		t.Fatalf("users after both doors released = %v; want none", got)
	}
	if _, err := csipb.NewControllerClient(conn).DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: name}); err != nil {
		t.Fatal(err)
	}
}
