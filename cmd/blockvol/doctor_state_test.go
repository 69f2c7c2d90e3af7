package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockvol/blockvol/config"
)

// The doctor lists the damaged records serve set aside, and checks every
// program the fs package runs.
func TestDoctorListsDamagedRecordsAndEveryTool(t *testing.T) {
	h := newHostTree(t)
	h.file("/var/lib/blockvol/volumes/good.json", "{}", 0o600)
	h.file("/var/lib/blockvol/volumes/bad.json.damaged-20261201T000000.000000000Z", "", 0o600)
	h.file("/var/lib/blockvol/seen.json.damaged-20261201T000000.000000000Z", "x", 0o600)
	for _, tool := range []string{"wipefs", "e2fsck", "fsfreeze"} {
		if err := os.Remove(filepath.Join(h.root, "/usr/sbin", tool)); err != nil {
			t.Fatal(err)
		}
	}
	d := newTestDoctor(t, h, 0o600, map[string]string{"local": "loop"}, unameCall)
	rs := byCheck(t, d.run(context.Background()))
	r := rs["state records"]
	if r.Status != statusWarn || !strings.Contains(r.Detail, "2 damaged record(s)") ||
		!strings.Contains(r.Detail, "/var/lib/blockvol/volumes/bad.json.damaged-") || !strings.Contains(r.Detail, "/var/lib/blockvol/seen.json.damaged-") {
		t.Errorf("state records = %+v; want a WARN naming both set-aside files", r)
	}
	for tool, pkg := range map[string]string{"wipefs": "util-linux", "e2fsck": "e2fsprogs", "fsfreeze": "util-linux"} {
		if r := rs["tool "+tool]; r.Status != statusFail || r.Fix != "apt-get install "+pkg {
			t.Errorf("tool %s = %+v; want FAIL with apt-get install %s", tool, r, pkg)
		}
	}
}

// The doctor lists the snapshot records a loop backend set aside as
// damaged (WARN, naming each), and says OK when there are none.
func TestDoctorListsDamagedSnapshotRecords(t *testing.T) {
	h := newHostTree(t)
	h.file("/srv/loop-a/snapshots/good.json", "{}", 0o600)
	h.file("/srv/loop-a/snapshots/bad.json.damaged-20261201T000000.000000000Z", "{garbled", 0o600)
	d := newTestDoctor(t, h, 0o600, map[string]string{"a": "loop", "b": "loop"}, unameCall, unameCall)
	d.Config.Backends["a"] = config.BackendConfig{Type: "loop", Settings: &config.LoopConfig{DataDir: "/srv/loop-a"}}
	d.Config.Backends["b"] = config.BackendConfig{Type: "loop", Settings: &config.LoopConfig{DataDir: "/srv/loop-b"}}
	r := byCheck(t, d.run(context.Background()))["snapshot records"]
	if r.Status != statusWarn || !strings.Contains(r.Detail, "1 damaged snapshot record(s)") ||
		!strings.Contains(r.Detail, "/srv/loop-a/snapshots/bad.json.damaged-20261201T000000.000000000Z") {
		t.Errorf("snapshot records = %+v; want a WARN naming the set-aside record", r)
	}
	if err := os.Remove(filepath.Join(h.root, "/srv/loop-a/snapshots/bad.json.damaged-20261201T000000.000000000Z")); err != nil {
		t.Fatal(err)
	}
	r = byCheck(t, d.run(context.Background()))["snapshot records"]
	if r.Status != statusOK {
		t.Errorf("snapshot records = %+v; want OK", r)
	}
}
