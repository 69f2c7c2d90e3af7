package plugin

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/docker/go-plugins-helpers/volume"

	"github.com/blockvol/blockvol/fs"
)

// The set of volumes seen on a backend survives a restart: Get during an
// outage that began before the restart still answers for an idle volume.
func TestGetDuringOutageAfterRestart(t *testing.T) {
	h := newHarness(t)
	h.create("idle", nil)
	h.be.getErr = errors.New("connection refused")
	h.d = h.newDriver()
	res, err := h.d.Get(&volume.GetRequest{Name: "idle"})
	if err != nil {
		t.Fatalf("Get of a known volume after a restart during an outage failed (Docker would forget it): %v", err)
	}
	if res.Volume.Name != "idle" || !strings.Contains(res.Volume.Status["error"].(string), "connection refused") {
		t.Fatalf("Get = %+v; want the volume with the outage in Status", res.Volume)
	}
	// Removed volumes are forgotten, across restarts too.
	h.be.getErr = nil
	if err := h.d.Remove(&volume.RemoveRequest{Name: "idle"}); err != nil {
		t.Fatal(err)
	}
	h.be.getErr = errors.New("connection refused")
	h.d = h.newDriver()
	if res, err := h.d.Get(&volume.GetRequest{Name: "idle"}); err == nil {
		t.Fatalf("Get of a removed volume = %+v; want the outage", res.Volume)
	}
}

// One damaged record never stops the plugin: it is set aside (kept,
// renamed), the other volumes are served, and Get of its volume reports the
// damage.
func TestDamagedRecordIsSetAside(t *testing.T) {
	for _, tc := range []struct{ name, data string }{
		{"empty", ""},
		{"truncated", `{"name":"bad","backend":"local","pha`},
		{"random bytes", "\x93\x00\xff\xfegarbage"},
		{"another name", `{"name":"other","backend":"local","phase":"mounted","users":["x"],"mountpoint":"/mnt/bv/other"}`},
		{"unknown phase", `{"name":"bad","backend":"local","phase":"exploded","mountpoint":"/mnt/bv/bad"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.create("good", nil)
			h.create("bad", nil)
			mp := h.mount("good", id1)
			recDir := filepath.Join(h.stateDir, "volumes")
			if err := os.WriteFile(filepath.Join(recDir, "bad.json"), []byte(tc.data), 0o600); err != nil {
				t.Fatal(err)
			}

			h.d = h.newDriver() // fails the test if New fails

			if _, err := os.Stat(filepath.Join(recDir, "bad.json")); !os.IsNotExist(err) {
				t.Errorf("damaged record still in place (%v)", err)
			}
			set, _ := filepath.Glob(filepath.Join(recDir, "bad.json.damaged-*"))
			if len(set) != 1 {
				t.Fatalf("damaged record not kept aside: %v", set)
			}
			if data, _ := os.ReadFile(set[0]); string(data) != tc.data {
				t.Errorf("set-aside record holds %q, want the original %q", data, tc.data)
			}
			res, err := h.d.Get(&volume.GetRequest{Name: "good"})
			if err != nil || res.Volume.Mountpoint != mp {
				t.Errorf("Get of a healthy volume = %+v, %v", res, err)
			}
			res, err = h.d.Get(&volume.GetRequest{Name: "bad"})
			if err != nil {
				t.Fatalf("Get of the damaged volume: %v", err)
			}
			if d, _ := res.Volume.Status["damage"].(string); !strings.Contains(d, set[0]) {
				t.Errorf("Get Status %v: want the damage naming %s", res.Volume.Status, set[0])
			}
			h.mount("bad", id2)
			h.unmount("bad", id2)
			if err := h.d.Remove(&volume.RemoveRequest{Name: "bad"}); err != nil {
				t.Errorf("Remove of the damaged volume: %v", err)
			}
		})
	}
}

// A volume is fresh until its first use has handed it out: a first Mount
// that fails leaves it fresh (the next one finishes it, lost+found
// removed); a filesystem found is never formatted over; once mounted, it
// is fresh no more.
func TestFreshUntilFirstHandedOut(t *testing.T) {
	h := newHarness(t)
	h.create("f", nil)
	fresh := func() bool {
		h.be.mu.Lock()
		defer h.be.mu.Unlock()
		return h.be.vols["f"].Meta["blockvol.fresh"] == "true"
	}
	if !fresh() {
		t.Fatal("a created volume is not fresh")
	}
	h.fs.failNext("mount", errors.New("interrupted"))
	if _, err := h.d.Mount(&volume.MountRequest{Name: "f", ID: id1}); err == nil {
		t.Fatal("Mount succeeded despite the failure")
	}
	if !fresh() {
		t.Fatal("a volume whose first mount failed is fresh no more")
	}
	h.mount("f", id1)
	if fresh() {
		t.Fatal("a volume handed out is still fresh")
	}
	for _, c := range h.fs.callLog() {
		if strings.Contains(c, "overwrite=true") {
			t.Errorf("a volume without overwritefs was prepared with %q", c)
		}
	}
}

// A first mkfs killed half-way leaves a filesystem that cannot be checked
// or mounted on a volume never handed out: its next first use makes it
// again, because nothing of a user's can be on it. A volume already handed
// out is never formatted over, whatever fails.
func TestFreshVolumeWithAnUnusableFilesystemIsMadeAgain(t *testing.T) {
	for _, tc := range []struct {
		name, failOp string
		err          error
	}{
		{"check fails", "prepare", fmt.Errorf("e2fsck exited with status 4: %w", fs.ErrNeedsRepair)},
		{"mount fails", "mount", errors.New("structure needs cleaning")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.create("half", nil)
			// What a killed mkfs.ext4 leaves: a signature, no usable filesystem.
			h.fs.mu.Lock()
			h.fs.fsOn["/dev/fake1"] = "ext4" // the harness's first attach
			h.fs.mu.Unlock()
			h.fs.failNext(tc.failOp, tc.err)
			h.mount("half", id1)
			var remade bool
			for _, c := range h.fs.callLog() {
				remade = remade || strings.HasPrefix(c, "prepare ") && strings.HasSuffix(c, "overwrite=true")
			}
			if !remade {
				t.Errorf("the unusable filesystem of a fresh volume was not made again; calls: %q", h.fs.callLog())
			}
			h.unmount("half", id1)

			// Handed out now: the same failure is an error, never a format.
			h.fs.failNext(tc.failOp, tc.err)
			before := len(h.fs.callLog())
			if _, err := h.d.Mount(&volume.MountRequest{Name: "half", ID: id2}); err == nil {
				t.Fatal("Mount of a handed-out volume with an unusable filesystem succeeded")
			}
			for _, c := range h.fs.callLog()[before:] {
				if strings.HasSuffix(c, "overwrite=true") {
					t.Errorf("a volume already handed out was formatted over: %q", c)
				}
			}
		})
	}
}
