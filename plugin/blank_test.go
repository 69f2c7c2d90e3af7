package plugin

import (
	"context"
	"reflect"
	"testing"

	"github.com/blockvol/blockvol/volumes"
)

// blankBackend is a fakeBackend that proves a device blank, or not.
type blankBackend struct {
	*fakeBackend
	blank bool
	asked []string
}

func (b *blankBackend) ProvenBlank(_ context.Context, name, dev string) (bool, error) {
	b.asked = append(b.asked, name+" "+dev)
	return b.blank, nil
}

// TestProvenBlankSkipsTheProbe: the first mount of a fresh volume whose
// backend proves it blank formats without Prepare's probe; a volume not
// proven blank, and every later mount, goes through Prepare.
func TestProvenBlankSkipsTheProbe(t *testing.T) {
	for _, tc := range []struct {
		name  string
		blank bool
		opts  map[string]string
		want  []string
	}{
		{"blank", true, nil, []string{
			"format blank /dev/fake1 ext4", "mount /dev/fake1 /mnt/bv/v ext4 []", "unmount /mnt/bv/v",
			"prepare /dev/fake2 ext4 overwrite=false", "mount /dev/fake2 /mnt/bv/v ext4 []", "unmount /mnt/bv/v"}},
		{"not proven", false, nil, []string{
			"prepare /dev/fake1 ext4 overwrite=false", "mount /dev/fake1 /mnt/bv/v ext4 []", "unmount /mnt/bv/v",
			"prepare /dev/fake2 ext4 overwrite=false", "mount /dev/fake2 /mnt/bv/v ext4 []", "unmount /mnt/bv/v"}},
		{"blank, overwritefs", true, map[string]string{"overwritefs": "true"}, []string{
			"format blank /dev/fake1 ext4", "mount /dev/fake1 /mnt/bv/v ext4 []", "unmount /mnt/bv/v",
			"prepare /dev/fake2 ext4 overwrite=false", "mount /dev/fake2 /mnt/bv/v ext4 []", "unmount /mnt/bv/v"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			be := &blankBackend{fakeBackend: h.be, blank: tc.blank}
			h.d = h.newDriverWith(func(c *volumes.Config) { c.Backends["local"] = be })
			h.create("v", tc.opts)
			for _, id := range []string{"a", "b"} {
				h.mount("v", id)
				h.unmount("v", id)
			}
			if got := h.fs.callLog(); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("fs calls %q, want %q", got, tc.want)
			}
			if want := []string{"v /dev/fake1"}; !reflect.DeepEqual(be.asked, want) {
				t.Errorf("ProvenBlank asked %q, want %q (the fresh volume's first mount only)", be.asked, want)
			}
		})
	}
}
