package loop

import (
	"context"
	"os"
	"testing"

	"github.com/blockvol/blockvol/backends"
)

// TestRealProvenBlank: a fresh volume's device is proven blank; one with a
// byte written, through the device (still in its page cache, not synced) or
// into the image, is not; nor is a device of another image.
func TestRealProvenBlank(t *testing.T) {
	b := newRealBackend(t)
	ctx := context.Background()
	attach := func(name string) string {
		t.Helper()
		if _, err := b.Create(ctx, backends.CreateRequest{Name: name, SizeBytes: 8 * mib}); err != nil {
			t.Fatal(err)
		}
		dev, err := b.Attach(ctx, name, backends.AttachOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return dev
	}
	fresh := attach("fresh")
	if blank, err := b.ProvenBlank(ctx, "fresh", fresh); err != nil || !blank {
		t.Fatalf("ProvenBlank of a fresh volume = %t, %v; want true", blank, err)
	}

	other := attach("other")
	if blank, err := b.ProvenBlank(ctx, "fresh", other); err != nil || blank {
		t.Errorf("ProvenBlank of another volume's device = %t, %v; want false", blank, err)
	}

	// A write through the device that still sits in its page cache: the
	// writer keeps it open, so nothing has flushed it.
	w, err := os.OpenFile(other, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.WriteAt([]byte{0x55, 0xAA}, 510); err != nil {
		t.Fatal(err)
	}
	if blank, err := b.ProvenBlank(ctx, "other", other); err != nil || blank {
		t.Errorf("ProvenBlank after an unsynced write to the device = %t, %v; want false", blank, err)
	}

	direct := attach("direct")
	f, err := os.OpenFile(b.imgPath("direct"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{1}, 4*mib); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if blank, err := b.ProvenBlank(ctx, "direct", direct); err != nil || blank {
		t.Errorf("ProvenBlank after a write into the image = %t, %v; want false", blank, err)
	}
}
