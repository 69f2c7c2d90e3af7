package iscsi

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockvol/blockvol/hostexec"
)

// Rescan writes "1" to the rescan attribute of the target's LUN on each of
// its sessions, and to no other LUN's; it runs no program (no re-login).
func TestRescanTouchesOnlyTheLUN(t *testing.T) {
	tr := newTree(t)
	const iqn = "iqn.2026-12.bvsnap:v1"
	tr.addSession(1, iqn, "127.0.0.1", 3260)
	tr.addLUN(1, 1, "sdb")
	tr.addLUN(1, 2, "sdc")
	rescan := func(lun string) string {
		return filepath.Join(tr.sys, "class", "iscsi_session", "session1", "device", "target2:0:0", "2:0:0:"+lun, "rescan")
	}
	tr.write(rescan("1"), "")
	tr.write(rescan("2"), "")
	i, _ := newTestInitiator(t, tr, hostexec.NewFake(t), nil)
	if err := i.Rescan(t.Context(), Target{IQN: iqn, Portals: []string{"127.0.0.1:3260"}, LUN: 1}); err != nil {
		t.Fatal(err)
	}
	for lun, want := range map[string]string{"1": "1", "2": ""} {
		b, err := os.ReadFile(rescan(lun))
		if err != nil || strings.TrimSpace(string(b)) != want {
			t.Errorf("LUN %s rescan attribute = %q, %v; want %q", lun, b, err, want)
		}
	}
	// No session of the target here: nothing to do.
	if err := i.Rescan(t.Context(), Target{IQN: iqn + "x", Portals: []string{"127.0.0.1:3260"}, LUN: 1}); err != nil {
		t.Fatal(err)
	}
}
