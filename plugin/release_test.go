package plugin

import (
	"context"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/volume"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/volumes"
)

// attachedN counts f's attached volumes under its lock (a deferred release
// detaches from a timer's goroutine).
func attachedN(f *fakeBackend) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.attached)
}

// released returns a harness whose volume "v" was created, mounted and
// released (its last Unmount) with the given release delay and scope.
func released(t *testing.T, delay time.Duration, scope string) *harness {
	h := newHarness(t)
	h.be.scope = scope
	h.d = h.newDriverWith(func(c *volumes.Config) { c.ReleaseDelay = delay })
	h.create("v", nil)
	h.mount("v", id1)
	h.unmount("v", id1)
	return h
}

// TestDeferredReleaseIsJoined: Docker's copy-up Unmount followed at once
// by the container's Mount reuses the mount (no second attach, prepare or
// mount); Path shows nothing in between; Wait finishes the last release.
func TestDeferredReleaseIsJoined(t *testing.T) {
	h := released(t, time.Hour, backends.ScopeLocal)
	if got := h.path("v"); got != "" {
		t.Errorf("Path after the last Unmount = %q, want empty", got)
	}
	if len(h.fs.mounted()) != 1 || attachedN(h.be) != 1 {
		t.Fatalf("released volume not kept for the delay: mounts %v, attached %d", h.fs.mounted(), attachedN(h.be))
	}
	if mp := h.mount("v", id2); mp != "/mnt/bv/v" {
		t.Errorf("Mount = %q", mp)
	}
	h.unmount("v", id2)
	want := []string{"prepare /dev/fake1 ext4 overwrite=false", "mount /dev/fake1 /mnt/bv/v ext4 []"}
	if got := h.fs.callLog(); !reflect.DeepEqual(got, want) {
		t.Errorf("fs calls %q, want %q (the second use joins the mount)", got, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.d.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if len(h.fs.mounted()) != 0 || attachedN(h.be) != 0 {
		t.Fatalf("after Wait: mounts %v, attached %d; want none", h.fs.mounted(), attachedN(h.be))
	}
	if h.hasRecord("v") {
		t.Error("record left after the deferred release finished")
	}
}

// TestDeferredReleaseFires: the delay passes and the volume goes.
func TestDeferredReleaseFires(t *testing.T) {
	h := released(t, time.Millisecond, backends.ScopeLocal)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(5 * time.Second)
	for h.hasRecord("v") {
		select {
		case <-deadline:
			t.Fatal("deferred release never finished")
		case <-tick.C:
		}
	}
	if len(h.fs.mounted()) != 0 || attachedN(h.be) != 0 {
		t.Fatalf("mounts %v, attached %d; want none", h.fs.mounted(), attachedN(h.be))
	}
}

// TestDeferredReleaseRemove: Remove right after the last Unmount tears the
// volume down first; a global-scope backend is released at once.
func TestDeferredReleaseRemoveAndGlobal(t *testing.T) {
	h := released(t, time.Hour, backends.ScopeLocal)
	if err := h.d.Remove(&volume.RemoveRequest{Name: "v"}); err != nil {
		t.Fatalf("Remove during a deferred release: %v", err)
	}
	if len(h.fs.mounted()) != 0 || attachedN(h.be) != 0 || !slices.Contains(h.be.calls, "remove v") {
		t.Fatalf("mounts %v, attached %d, calls %v", h.fs.mounted(), attachedN(h.be), h.be.calls)
	}

	g := released(t, time.Hour, backends.ScopeGlobal)
	if len(g.fs.mounted()) != 0 || attachedN(g.be) != 0 {
		t.Fatalf("global-scope volume kept: mounts %v, attached %d", g.fs.mounted(), attachedN(g.be))
	}
}
