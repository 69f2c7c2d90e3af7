package soak

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockvol/blockvol/internal/testenv"
)

// The real binary with a damaged record in its state directory: it
// serves (the record set aside, one log line naming it), Get of that
// volume reports the damage, and `blockvol doctor` lists the file.
func TestServeWithADamagedRecord(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real plugin")
	}
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "losetup", "go")
	s := newSoak(t)
	s.start(false)
	ctx := context.Background()
	for _, n := range []string{"bvgood", "bvbad"} {
		if err := s.call(ctx, "/VolumeDriver.Create", nameReq{Name: n}, nil); err != nil {
			t.Fatal(err)
		}
	}
	s.kill9()
	recDir := filepath.Join(s.stateDir, "volumes")
	if err := os.MkdirAll(recDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(recDir, "bvbad.json"), []byte("\x00\x17{garbage"), 0o600); err != nil {
		t.Fatal(err)
	}

	s.start(false)
	var g struct {
		Volume struct{ Status map[string]any }
	}
	if err := s.call(ctx, "/VolumeDriver.Get", nameReq{Name: "bvbad"}, &g); err != nil {
		t.Fatalf("Get of the volume whose record is damaged: %v", err)
	}
	if d, _ := g.Volume.Status["damage"].(string); !strings.Contains(d, "bvbad.json.damaged-") {
		t.Errorf("Get Status %v: want the damage naming the set-aside file", g.Volume.Status)
	}
	if err := s.call(ctx, "/VolumeDriver.Get", nameReq{Name: "bvgood"}, nil); err != nil {
		t.Errorf("Get of a healthy volume: %v", err)
	}
	logs, _ := os.ReadFile(filepath.Join(s.dir, "plugin.log"))
	if n := strings.Count(string(logs), "damaged volume record set aside"); n != 1 {
		t.Errorf("%d log lines about the damaged record, want 1", n)
	}
	out, _ := exec.Command(s.bin, "doctor", "--config", s.cfg).CombinedOutput()
	if !strings.Contains(string(out), "1 damaged record(s)") || !strings.Contains(string(out), "bvbad.json.damaged-") {
		t.Errorf("doctor does not list the damaged record:\n%s", out)
	}
	for _, n := range []string{"bvgood", "bvbad"} {
		if err := s.call(ctx, "/VolumeDriver.Remove", nameReq{Name: n}, nil); err != nil {
			t.Errorf("Remove %s: %v", n, err)
		}
	}
}
