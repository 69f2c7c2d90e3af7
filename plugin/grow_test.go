package plugin

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/docker/go-plugins-helpers/volume"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/volumes"
)

// heldBackend is snapBackend with backends.HeldExpander: ExpandHeld logs
// into the filesystem's call log (one order for both), runs its LUN step
// through hold, and fails that step with stepErr when set.
type heldBackend struct {
	*snapBackend
	fs      *toolsFS
	stepErr error
}

func (b *heldBackend) ExpandHeld(ctx context.Context, name string, size int64, hold func(step func() error) error) (backends.Volume, error) {
	_ = b.fs.log(fmt.Sprintf("expandheld %s %d", name, size))
	if err := hold(func() error {
		_ = b.fs.log("relun " + name)
		return b.stepErr
	}); err != nil {
		return backends.Volume{}, err
	}
	_ = b.fs.log("rescan " + name)
	return b.snapBackend.Expand(ctx, name, size)
}

func newHeldHarness(t *testing.T) (*harness, *heldBackend, *toolsFS) {
	h, sb, fs := newSnapHarness(t)
	be := &heldBackend{snapBackend: sb, fs: fs}
	h.d = h.newDriverWith(func(c *volumes.Config) {
		c.Backends = map[string]backends.Backend{"local": be}
		c.FS = fs
	})
	return h, be, fs
}

// Resize of a volume mounted here on a backend that needs this host's
// writes held (iscsitarget): the backend's LUN step runs with the
// filesystem frozen, the thaw follows it on every path, and the
// filesystem grows after the thaw; a volume not mounted here goes
// through the plain Expand, nothing frozen.
func TestResizeHoldsWritesForAHeldExpander(t *testing.T) {
	for _, tc := range []struct {
		name    string
		stepErr error
		want    []string
	}{
		{"grown", nil, []string{"expandheld v 2147483648", "freeze /mnt/bv/v", "relun v", "thaw /mnt/bv/v", "rescan v", "grow /dev/fake1 /mnt/bv/v"}},
		{"step fails", errors.New("tgt is down"), []string{"expandheld v 2147483648", "freeze /mnt/bv/v", "relun v", "thaw /mnt/bv/v"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, be, fs := newHeldHarness(t)
			be.stepErr = tc.stepErr
			if err := h.d.Create(&volume.CreateRequest{Name: "v", Options: map[string]string{"size": "1G"}}); err != nil {
				t.Fatal(err)
			}
			if _, err := h.d.Mount(&volume.MountRequest{Name: "v", ID: "c1"}); err != nil {
				t.Fatal(err)
			}
			err := h.core.Resize(t.Context(), "v", 2<<30)
			if !errors.Is(err, tc.stepErr) || (tc.stepErr == nil) != (err == nil) {
				t.Fatalf("Resize = %v; want %v", err, tc.stepErr)
			}
			got := calls(fs.callLog(), "expandheld", "freeze", "relun", "thaw", "rescan", "grow")
			if !slices.Equal(got, tc.want) {
				t.Fatalf("calls\n%q\nwant\n%q", got, tc.want)
			}
			if tc.stepErr != nil && !strings.Contains(err.Error(), `volume "v" cannot be grown: tgt is down`) {
				t.Fatalf("error %q", err)
			}
		})
	}
	t.Run("not mounted", func(t *testing.T) {
		h, _, fs := newHeldHarness(t)
		if err := h.d.Create(&volume.CreateRequest{Name: "v", Options: map[string]string{"size": "1G"}}); err != nil {
			t.Fatal(err)
		}
		if err := h.core.Resize(t.Context(), "v", 2<<30); err != nil {
			t.Fatal(err)
		}
		if got := calls(fs.callLog(), "expandheld", "freeze", "relun", "thaw"); len(got) != 0 {
			t.Fatalf("a volume not mounted here was grown held: %q", got)
		}
		v, _ := h.be.Get(t.Context(), "v")
		if v.SizeBytes != 2<<30 {
			t.Fatalf("volume %+v", v)
		}
	})
}
