package plugin_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

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
