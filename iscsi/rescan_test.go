package iscsi

import (
	"os"
	"path/filepath"
	"strconv"
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

// A LUN whose paths a dm multipath map holds: every path is rescanned
// first, then multipathd resizes the map, once, by its name; a refusal
// ("fail", exit 0) is an error naming the map.
func TestRescanResizesTheMultipathMap(t *testing.T) {
	for _, tc := range []struct {
		answer  string
		wantErr string
	}{
		{answer: "ok\n"},
		{answer: "fail\n", wantErr: `multipath map mpatha (dm-0) did not take the LUN's new size: multipathd answered "fail"`},
	} {
		t.Run(strings.TrimSpace(tc.answer), func(t *testing.T) {
			tr := newTree(t)
			const iqn = "iqn.2026-12.bvgrow:v1"
			tr.addSession(1, iqn, "127.0.0.1", 3260)
			tr.addSession(2, iqn, "127.0.0.2", 3260)
			tr.addLUN(1, 1, "sdb")
			tr.addLUN(2, 1, "sdc")
			tr.addDM("dm-0", "mpatha", "mpath-36000000000000001", "sdb", "sdc")
			rescan := func(session, host int) string {
				return filepath.Join(tr.sys, "class", "iscsi_session", "session"+strconv.Itoa(session), "device",
					"target"+strconv.Itoa(host)+":0:0", strconv.Itoa(host)+":0:0:1", "rescan")
			}
			tr.write(rescan(1, 2), "")
			tr.write(rescan(2, 3), "")
			fake := hostexec.NewFake(t, hostexec.Call{
				Argv:   []string{"multipathd", "resize", "map", "mpatha"},
				Stdout: tc.answer,
				Do: func() { // every path was rescanned before
					for _, p := range []string{rescan(1, 2), rescan(2, 3)} {
						if b, _ := os.ReadFile(p); strings.TrimSpace(string(b)) != "1" {
							t.Errorf("multipathd resize ran before %s was rescanned", p)
						}
					}
				},
			})
			i, _ := newTestInitiator(t, tr, fake, nil)
			err := i.Rescan(t.Context(), Target{IQN: iqn, Portals: []string{"127.0.0.1:3260", "127.0.0.2:3260"}, LUN: 1})
			fake.Done()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatal(err)
			case tc.wantErr != "" && (err == nil || err.Error() != tc.wantErr):
				t.Fatalf("Rescan = %v; want %q", err, tc.wantErr)
			}
		})
	}
}
