package plugin

import (
	"context"
	"reflect"
	"testing"

	"github.com/docker/go-plugins-helpers/volume"

	"github.com/blockvol/blockvol/volumes"
)

// unchangedBackend is a fakeBackend that proves a volume unchanged since
// its last detach, or not.
type unchangedBackend struct {
	*fakeBackend
	same  bool
	asked []string
}

func (b *unchangedBackend) ProvenUnchanged(_ context.Context, name, dev string) (bool, error) {
	b.asked = append(b.asked, name+" "+dev)
	return b.same, nil
}

// TestUnchangedSkipsThePrepare: a volume mounted again after this process
// unmounted and detached it cleanly is mounted without Prepare's probe and
// check when its backend proves it unchanged and its superblock is clean;
// otherwise Prepare runs as on any mount. The first mount is never asked.
func TestUnchangedSkipsThePrepare(t *testing.T) {
	first := []string{"prepare /dev/fake1 ext4 overwrite=false", "mount /dev/fake1 /mnt/bv/v ext4 []", "unmount /mnt/bv/v"}
	for _, tc := range []struct {
		name        string
		same, dirty bool
		want        []string
	}{
		{"unchanged and clean", true, false, []string{
			"clean /dev/fake2 ext4", "mount /dev/fake2 /mnt/bv/v ext4 []", "unmount /mnt/bv/v"}},
		{"not proven unchanged", false, false, []string{
			"prepare /dev/fake2 ext4 overwrite=false", "mount /dev/fake2 /mnt/bv/v ext4 []", "unmount /mnt/bv/v"}},
		{"unchanged, superblock not clean", true, true, []string{
			"clean /dev/fake2 ext4", "prepare /dev/fake2 ext4 overwrite=false", "mount /dev/fake2 /mnt/bv/v ext4 []", "unmount /mnt/bv/v"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.fs.dirty = tc.dirty
			be := &unchangedBackend{fakeBackend: h.be, same: tc.same}
			h.d = h.newDriverWith(func(c *volumes.Config) { c.Backends["local"] = be })
			h.create("v", nil)
			for _, id := range []string{"a", "b"} {
				h.mount("v", id)
				h.unmount("v", id)
			}
			if got, want := h.fs.callLog(), append(first, tc.want...); !reflect.DeepEqual(got, want) {
				t.Errorf("fs calls %q, want %q", got, want)
			}
			if want := []string{"v /dev/fake2"}; !reflect.DeepEqual(be.asked, want) {
				t.Errorf("ProvenUnchanged asked %q, want %q (the second mount only)", be.asked, want)
			}
		})
	}
}

// TestUnchangedNotAfterRemove: a volume removed and created again under
// its name is prepared afresh, whatever its backend says.
func TestUnchangedNotAfterRemove(t *testing.T) {
	h := newHarness(t)
	be := &unchangedBackend{fakeBackend: h.be, same: true}
	h.d = h.newDriverWith(func(c *volumes.Config) { c.Backends["local"] = be })
	h.create("v", nil)
	h.mount("v", "a")
	h.unmount("v", "a")
	if err := h.d.Remove(&volume.RemoveRequest{Name: "v"}); err != nil {
		t.Fatal(err)
	}
	h.create("v", nil)
	h.mount("v", "b")
	if len(be.asked) != 0 {
		t.Errorf("ProvenUnchanged asked %q after a Remove, want never", be.asked)
	}
}
