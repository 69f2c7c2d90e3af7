package plugin_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/blockvol/blockvol/internal/testenv"

	"github.com/docker/go-plugins-helpers/volume"
)

// losetupFind attaches img to a free loop device directly, as a losetup
// that outlived its killed plugin would have.
func losetupFind(t *testing.T, img string) string {
	t.Helper()
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v %s", err, out)
	}
	return strings.TrimSpace(string(out))
}

// Recovery trusts the host over the records: a loop device of a volume
// that has no plugin record, and one of an image that has no backend
// record, are both detached (and the debris image removed).
func TestRootRecoveryDetachesUnrecordedLoopDevices(t *testing.T) {
	h := newRealHost(t)
	if err := h.d.Create(&volume.CreateRequest{Name: "orphan"}); err != nil {
		t.Fatal(err)
	}
	losetupFind(t, filepath.Join(h.dataDir, "orphan.img"))
	debris := filepath.Join(h.dataDir, "debris.img")
	if err := os.WriteFile(debris, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	losetupFind(t, debris)

	h.restart()
	h.assertNothingLeft("orphan")
	if _, err := os.Stat(debris); !os.IsNotExist(err) {
		t.Errorf("debris image still there (%v)", err)
	}
	if err := h.d.Remove(&volume.RemoveRequest{Name: "orphan"}); err != nil {
		t.Fatalf("Remove after recovery: %v", err)
	}
}

// An image deleted while its volume is mounted: Get still says mounted,
// and Unmount detaches the loop device it attached.
func TestRootImageDeletedWhileMounted(t *testing.T) {
	h := newRealHost(t)
	if err := h.d.Create(&volume.CreateRequest{Name: "del"}); err != nil {
		t.Fatal(err)
	}
	mp := h.mount("del", rid1)
	if err := os.Remove(filepath.Join(h.dataDir, "del.img")); err != nil {
		t.Fatal(err)
	}
	res, err := h.d.Get(&volume.GetRequest{Name: "del"})
	if err != nil || res.Volume.Mountpoint != mp {
		t.Fatalf("Get of a mounted volume whose image was deleted = %+v, %v; want it mounted at %s", res, err, mp)
	}
	h.unmount("del", rid1)
	h.assertNothingLeft("del")
}

// A mkfs that finished after its plugin was killed (a first Mount never
// answered) leaves a filesystem with lost+found on a volume never handed
// out: the next Mount makes it again, and the volume is handed out empty.
func TestRootInterruptedFirstMountStillHandsOutAnEmptyVolume(t *testing.T) {
	h := newRealHost(t)
	if err := h.d.Create(&volume.CreateRequest{Name: "fresh"}); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(h.dataDir, "fresh.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v %s", err, out)
	}
	h.restart()
	mp := h.mount("fresh", rid1)
	if entries, err := os.ReadDir(mp); err != nil || len(entries) != 0 {
		t.Fatalf("a volume never handed out holds %v (%v); want it empty", entries, err)
	}
	if err := os.WriteFile(filepath.Join(mp, "data"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.unmount("fresh", rid1)
	mp = h.mount("fresh", rid2)
	if b, err := os.ReadFile(filepath.Join(mp, "data")); err != nil || string(b) != "kept" {
		t.Fatalf("second mount lost the data: %q %v", b, err)
	}
	h.unmount("fresh", rid2)
	h.assertNothingLeft("fresh")
}

// A plugin restarted in a new mount namespace (Docker restarts a managed
// plugin under containers still running on its volumes) no longer sees
// their mount, but the device is still attached and mounted there:
// recovery keeps the volume for its users instead of releasing it, a new
// user gets the same filesystem (the same loop device, not a second one on
// the same image), and the last release detaches it.
func TestRootRecoveryKeepsAVolumeMountedInAnotherNamespace(t *testing.T) {
	if _, err := exec.LookPath("unshare"); err != nil {
		testenv.Skip(t, "unshare not installed")
	}
	h := newRealHost(t)
	if err := h.d.Create(&volume.CreateRequest{Name: "hidden"}); err != nil {
		t.Fatal(err)
	}
	mp := h.mount("hidden", rid1)
	if err := os.WriteFile(filepath.Join(mp, "one"), []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The containers' namespace: a copy of ours, holding the mount.
	holder := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", "echo ready; exec sleep 600")
	out, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	stopHolder := func() { _ = holder.Process.Kill(); _ = holder.Wait() }
	defer stopHolder()
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		t.Fatalf("the namespace holder did not start: %v", err)
	}
	inHolder := func(args ...string) (string, error) {
		b, err := exec.Command("nsenter", append([]string{"--mount=/proc/" + strconv.Itoa(holder.Process.Pid) + "/ns/mnt"}, args...)...).CombinedOutput()
		return strings.TrimSpace(string(b)), err
	}
	if err := syscall.Unmount(mp, 0); err != nil {
		t.Fatal(err)
	}

	h.restart()
	res, err := h.d.Get(&volume.GetRequest{Name: "hidden"})
	if err != nil || res.Volume.Status["mounts"] != 1 {
		t.Fatalf("Get after the restart = %+v, %v; want the volume kept for its one user", res, err)
	}
	if loops := loopsUnder(h.dataDir); len(loops) != 1 || isAutoclear(loops[0]) {
		t.Fatalf("loop devices after the restart: %v; want the one still in use, not being detached", loops)
	}
	if got := h.mount("hidden", rid2); got != mp {
		t.Fatalf("Mount = %s, want %s", got, mp)
	}
	if b, err := os.ReadFile(filepath.Join(mp, "one")); err != nil || string(b) != "1" {
		t.Fatalf("the new user reads %q, %v; want the data", b, err)
	}
	if err := os.WriteFile(filepath.Join(mp, "two"), []byte("2"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := inHolder("cat", filepath.Join(mp, "two")); err != nil || got != "2" {
		t.Fatalf("the old user reads %q, %v; want what the new one wrote (one filesystem, not two)", got, err)
	}
	if loops := loopsUnder(h.dataDir); len(loops) != 1 {
		t.Fatalf("loop devices: %v; want one", loops)
	}
	h.unmount("hidden", rid2)
	if dev, _ := h.fs.MountedDevice(mp); dev == "" {
		t.Fatal("the new user's Unmount released the volume the old user still holds")
	}
	h.unmount("hidden", rid1)
	stopHolder()
	h.assertNothingLeft("hidden")
}

func isAutoclear(dev string) bool {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "autoclear"))
	return err == nil && strings.TrimSpace(string(b)) == "1"
}
