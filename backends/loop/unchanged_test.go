package loop

import (
	"context"
	"os"
	"testing"

	"github.com/blockvol/blockvol/backends"
)

// TestRealProvenUnchanged: a volume detached with nothing left holding it
// and attached again is proven unchanged, once; not after a byte written
// into its image right after the detach (within one tick of the kernel's
// coarse clock), not when a holder kept its device open through the
// detach (it could have written until it closed it), and never for
// another image's device.
func TestRealProvenUnchanged(t *testing.T) {
	b := newRealBackend(t)
	ctx := context.Background()
	attach := func(name string) string {
		t.Helper()
		dev, err := b.Attach(ctx, name, backends.AttachOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return dev
	}
	detach := func(name string) {
		t.Helper()
		if err := b.Detach(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	proven := func(name, dev string) bool {
		t.Helper()
		same, err := b.ProvenUnchanged(ctx, name, dev)
		if err != nil {
			t.Fatal(err)
		}
		return same
	}
	for _, name := range []string{"v", "other"} {
		if _, err := b.Create(ctx, backends.CreateRequest{Name: name, SizeBytes: 8 * mib}); err != nil {
			t.Fatal(err)
		}
	}
	if proven("v", attach("v")) {
		t.Error("proven unchanged before any detach")
	}
	detach("v")
	dev := attach("v")
	if !proven("v", dev) {
		t.Error("not proven unchanged after a detach and an attach")
	}
	if proven("v", dev) {
		t.Error("one detach proved unchanged twice")
	}

	detach("v")
	f, err := os.OpenFile(b.imgPath("v"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{1}, 4*mib); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if proven("v", attach("v")) {
		t.Error("proven unchanged after a write into the image right after the detach")
	}

	detach("v")
	other := attach("other")
	if proven("v", other) {
		t.Error("another image's device proven unchanged")
	}

	dev = attach("v")
	holder, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	detach("v") // the kernel detaches it when the holder closes it
	holder.Close()
	waitDetachedFromSysfs(t, b, b.imgPath("v"))
	if proven("v", attach("v")) {
		t.Error("proven unchanged after a detach that a holder outlived")
	}
}
