package plugin_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/docker/go-plugins-helpers/volume"
)

// TestRootRemountUnchanged on real loop devices and ext4: `docker run`'s
// copy-up Unmount followed by the container's Mount mounts the volume
// again without blkid and e2fsck, its data there; a byte written into the
// image while it was detached, or a plugin restarted in between, brings
// both back.
func TestRootRemountUnchanged(t *testing.T) {
	h := newRealHost(t)
	if err := h.d.Create(&volume.CreateRequest{Name: "ru"}); err != nil {
		t.Fatal(err)
	}
	mp := h.mount("ru", rid1)
	if err := os.WriteFile(filepath.Join(mp, "copied"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.unmount("ru", rid1)
	checked := func(why string, want bool) {
		t.Helper()
		ran := h.fsRuns.take()
		if got := slices.Contains(ran, "blkid") && slices.Contains(ran, "e2fsck"); got != want {
			t.Errorf("%s: programs run %q; want blkid and e2fsck run: %t", why, ran, want)
		}
	}
	h.fsRuns.take()
	mp = h.mount("ru", rid2)
	checked("mounted again, unchanged", false)
	if _, err := os.Stat(filepath.Join(mp, "copied")); err != nil {
		t.Errorf("file of the first use: %v", err)
	}
	h.unmount("ru", rid2)

	img, err := os.OpenFile(filepath.Join(h.dataDir, "ru.img"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt([]byte{0}, 60<<20); err != nil {
		t.Fatal(err)
	}
	img.Close()
	h.fsRuns.take()
	h.mount("ru", rid1)
	checked("mounted again after a write into the image", true)
	h.unmount("ru", rid1)

	h.restart()
	h.mount("ru", rid2)
	checked("mounted again by a restarted plugin", true)
	h.unmount("ru", rid2)
	h.assertNothingLeft("ru")
}
