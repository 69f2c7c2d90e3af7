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
