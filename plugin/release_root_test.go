package plugin_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/volume"
)

// TestRootDeferredRelease on real loop devices and ext4: the copy-up
// Unmount followed by the container's Mount keeps one mount and one loop
// device (the file written under the first use is there); Wait ends a
// pending release, and so does a snapshot; a plugin killed while one was pending has its recovery
// unmount and detach the volume.
func TestRootDeferredRelease(t *testing.T) {
	h := newRealHost(t)
	h.releaseDelay = time.Hour
	h.restart()
	if err := h.d.Create(&volume.CreateRequest{Name: "dr"}); err != nil {
		t.Fatal(err)
	}
	mp := h.mount("dr", rid1)
	if err := os.WriteFile(filepath.Join(mp, "copied"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.unmount("dr", rid1)
	dev, err := h.fs.MountedDevice(mp)
	if err != nil || dev == "" {
		t.Fatalf("released volume not kept mounted for the delay: %q, %v", dev, err)
	}
	if mp2 := h.mount("dr", rid2); mp2 != mp {
		t.Fatalf("second Mount = %q, want %q", mp2, mp)
	}
	if again, _ := h.fs.MountedDevice(mp); again != dev {
		t.Errorf("second Mount moved the volume from %s to %s", dev, again)
	}
	if _, err := os.Stat(filepath.Join(mp, "copied")); err != nil {
		t.Errorf("file of the first use: %v", err)
	}
	if n := len(loopsUnder(h.dataDir)); n != 1 {
		t.Errorf("%d loop devices of the volume, want 1", n)
	}
	h.unmount("dr", rid2)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := h.d.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	h.assertNothingLeft("dr")

	// A snapshot of a volume with a release pending finishes the release
	// first: it copies an unmounted image, not a mounted, unfrozen one.
	h.mount("dr", rid1)
	h.unmount("dr", rid1)
	if _, err := h.core.CreateSnapshot(ctx, "dr", "dr-snap"); err != nil {
		t.Fatal(err)
	}
	h.assertNothingLeft("dr")

	// Killed with a release pending: the next start finishes it.
	h.mount("dr", rid1)
	h.unmount("dr", rid1)
	if dev, _ := h.fs.MountedDevice(mp); dev == "" {
		t.Fatal("released volume not kept mounted for the delay")
	}
	h.restart()
	h.assertNothingLeft("dr")
}
