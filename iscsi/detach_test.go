package iscsi

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/internal/sentinel"
)

func logoutCalls(p string) []hostexec.Call {
	return []hostexec.Call{
		{Argv: adm("-m", "node", "-T", testIQN, "-p", p, "--logout")},
		{Argv: adm("-m", "node", "-T", testIQN, "-p", p, "-o", "delete")},
	}
}

func TestDetach(t *testing.T) {
	target := Target{IQN: testIQN, Portals: []string{portalA}, LUN: 1}
	// Each case starts from session1 through portalA with LUN 1 = sdb
	// (ours) and LUN 2 = sdc (another volume).
	tests := []struct {
		name      string
		setup     func(tr *tree, sdb, sdc string)
		inUse     func(iqn string, exceptLUN int) bool
		calls     []hostexec.Call
		wantErr   error
		errHas    []string
		removed   bool // sdb's SCSI device deleted through sysfs
		logHas    string
		noSession bool
	}{{
		name:    "other LUN mounted (by device number): no logout",
		setup:   func(tr *tree, sdb, sdc string) { tr.mount(sdc, "/dev/sdc", "/var/lib/docker/plugins/x/vol2") },
		removed: true,
		logHas:  "LUN 2 (sdc) is in use: sdc is mounted on /var/lib/docker/plugins/x/vol2",
	}, {
		name: "other LUN's partition mounted by source path: no logout",
		setup: func(tr *tree, sdb, sdc string) {
			tr.addPartition("sdc", "sdc1", "8:33")
			tr.mount("0:99", "/dev/sdc1", "/mnt/p")
		},
		removed: true,
		logHas:  "sdc1 is mounted on /mnt/p",
	}, {
		name: "other LUN mounted through its by-path link: no logout",
		setup: func(tr *tree, sdb, sdc string) {
			tr.addByPath("127.0.0.1", 3260, testIQN, 2, "sdc")
			tr.mount("0:98", "/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-"+testIQN+"-lun-2", "/mnt/l")
		},
		removed: true,
	}, {
		name:    "other LUN held by LVM: no logout",
		setup:   func(tr *tree, sdb, sdc string) { tr.addDM("dm-5", "vg-lv", "LVM-abc", "sdc") },
		removed: true,
		logHas:  "sdc is held by dm-5",
	}, {
		name: "other LUN's multipath map mounted: no logout",
		setup: func(tr *tree, sdb, sdc string) {
			tr.addDM("dm-6", "mpathb", "mpath-3600b", "sdc")
			tr.mount("0:97", "/dev/mapper/mpathb", "/mnt/m")
		},
		removed: true,
		logHas:  "dm-6 is mounted on /mnt/m",
	}, {
		name:    "caller predicate says in use: no logout",
		inUse:   func(iqn string, lun int) bool { return iqn == testIQN && lun == 1 },
		removed: true,
		logHas:  "the caller has another LUN",
	}, {
		name:  "other LUN present but unused (idle multipath map): logout and delete",
		setup: func(tr *tree, sdb, sdc string) { tr.addDM("dm-6", "mpathb", "mpath-3600b", "sdc") },
		inUse: func(string, int) bool { return false },
		calls: logoutCalls(portalA),
	}, {
		name:  "own LUN held by an idle multipath map: logout",
		setup: func(tr *tree, sdb, sdc string) { tr.addDM("dm-7", "mpatha", "mpath-3600a", "sdb") },
		calls: logoutCalls(portalA),
	}, {
		name:    "own LUN still mounted: refused",
		setup:   func(tr *tree, sdb, sdc string) { tr.mount(sdb, "/dev/sdb", "/mnt/mine") },
		wantErr: sentinel.ErrInUse,
		errHas:  []string{"LUN 1", testIQN, "sdb is mounted on /mnt/mine"},
	}, {
		name: "logout failure is an error and keeps the record",
		calls: []hostexec.Call{{
			Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "--logout"), Code: 10,
			Stderr: "iscsiadm: Could not logout of [sid: 1, target: " + testIQN + ", portal: 127.0.0.1,3260].\n",
		}},
		errHas: []string{"iSCSI logout from " + testIQN + " at 127.0.0.1:3260 failed: the target did not complete the logout"},
	}, {
		name:      "no session: success",
		noSession: true,
		calls: []hostexec.Call{
			{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "--logout"), Code: 21, Stderr: "iscsiadm: No matching sessions found\n"},
			{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "delete"), Code: 21, Stderr: "iscsiadm: No records found\n"},
		},
	}, {
		name: "delete refused because a session appeared: error",
		calls: []hostexec.Call{
			{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "--logout")},
			{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "delete"), Code: 15},
		},
		wantErr: sentinel.ErrInUse,
		errHas:  []string{"node record deletion for " + testIQN + " at 127.0.0.1:3260 failed: a session still uses the record"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTree(t)
			var sdb, sdc string
			if !tc.noSession {
				tr.addSession(1, testIQN, "127.0.0.1", 3260)
				sdb = tr.addLUN(1, 1, "sdb")
				sdc = tr.addLUN(1, 2, "sdc")
			}
			// A session of another target with a mounted LUN 2 is irrelevant.
			tr.addSession(9, "iqn.2003-01.org.example:other", "127.0.0.1", 3260)
			tr.mount(tr.addLUN(9, 2, "sdz"), "/dev/sdz", "/mnt/other")
			if tc.setup != nil {
				tc.setup(tr, sdb, sdc)
			}
			fake := hostexec.NewFake(t, tc.calls...)
			i, logs := newTestInitiator(t, tr, fake, func(c *Config) { c.TargetInUse = tc.inUse })
			err := i.Detach(context.Background(), target)
			fake.Done()
			switch {
			case tc.wantErr == nil && tc.errHas == nil && err != nil:
				t.Fatalf("Detach: %v", err)
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("Detach = %v, want %v", err, tc.wantErr)
			case tc.errHas != nil && err == nil:
				t.Fatal("Detach succeeded")
			}
			for _, s := range tc.errHas {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
			if tc.logHas != "" && !strings.Contains(logs.String(), tc.logHas) {
				t.Errorf("log lacks %q:\n%s", tc.logHas, logs)
			}
			if tc.noSession {
				return
			}
			del, _ := os.ReadFile(filepath.Join(tr.sys, "class", "iscsi_session", "session1", "device", "target2:0:0", "2:0:0:1", "delete"))
			if got := string(del) == "1"; got != tc.removed {
				t.Errorf("sdb SCSI device removed = %v, want %v", got, tc.removed)
			}
			other, _ := os.ReadFile(filepath.Join(tr.sys, "class", "iscsi_session", "session1", "device", "target2:0:0", "2:0:0:2", "delete"))
			if len(other) != 0 {
				t.Error("the other LUN's SCSI device was removed")
			}
		})
	}
}

func TestDetachTwoPortals(t *testing.T) {
	target := Target{IQN: testIQN, Portals: []string{portalA, portalB}, LUN: 1}

	t.Run("both logged out", func(t *testing.T) {
		tr := newTree(t)
		tr.addSession(1, testIQN, "127.0.0.1", 3260)
		tr.addSession(2, testIQN, "127.0.0.2", 3260)
		tr.addLUN(1, 1, "sdb")
		tr.addLUN(2, 1, "sdc")
		fake := hostexec.NewFake(t, append(logoutCalls(portalA), logoutCalls(portalB)...)...)
		i, _ := newTestInitiator(t, tr, fake, nil)
		if err := i.Detach(context.Background(), target); err != nil {
			t.Fatal(err)
		}
		fake.Done()
	})

	t.Run("other LUN mounted on the second session only: no logout at all", func(t *testing.T) {
		tr := newTree(t)
		tr.addSession(1, testIQN, "127.0.0.1", 3260)
		tr.addSession(2, testIQN, "127.0.0.2", 3260)
		tr.addLUN(1, 1, "sdb")
		tr.addLUN(2, 1, "sdc")
		tr.mount(tr.addLUN(2, 4, "sdd"), "/dev/sdd", "/mnt/d")
		fake := hostexec.NewFake(t)
		i, _ := newTestInitiator(t, tr, fake, nil)
		if err := i.Detach(context.Background(), target); err != nil {
			t.Fatal(err)
		}
		fake.Done()
	})

	t.Run("first logout fails, second portal still processed", func(t *testing.T) {
		tr := newTree(t)
		fake := hostexec.NewFake(t, append([]hostexec.Call{
			{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "--logout"), Code: 20},
		}, logoutCalls(portalB)...)...)
		i, _ := newTestInitiator(t, tr, fake, nil)
		err := i.Detach(context.Background(), target)
		if !errors.Is(err, ErrDaemon) || !strings.Contains(err.Error(), portalA) {
			t.Fatalf("err = %v", err)
		}
		fake.Done()
	})
}

func TestDetachIface(t *testing.T) {
	tr := newTree(t)
	tr.addSession(1, testIQN, "127.0.0.1", 3260)
	tr.write(filepath.Join(tr.sys, "class", "iscsi_session", "session1", "ifacename"), "other\n")
	// The mounted LUN 2 runs on a session of another iface: not ours.
	tr.mount(tr.addLUN(1, 2, "sdc"), "/dev/sdc", "/mnt/c")
	fake := hostexec.NewFake(t,
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-I", "iface0", "--logout")},
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-I", "iface0", "-o", "delete")},
	)
	i, _ := newTestInitiator(t, tr, fake, func(c *Config) { c.Iface = "iface0" })
	if err := i.Detach(context.Background(), Target{IQN: testIQN, Portals: []string{portalA}, LUN: 1}); err != nil {
		t.Fatal(err)
	}
	fake.Done()
}

func TestDetachWithoutMountTable(t *testing.T) {
	tr := newTree(t)
	tr.addSession(1, testIQN, "127.0.0.1", 3260)
	tr.addLUN(1, 1, "sdb")
	fake := hostexec.NewFake(t)
	i, _ := newTestInitiator(t, tr, fake, func(c *Config) { c.MountInfoPath = filepath.Join(tr.sys, "missing") })
	err := i.Detach(context.Background(), Target{IQN: testIQN, Portals: []string{portalA}, LUN: 1})
	if err == nil || !strings.Contains(err.Error(), "cannot tell whether") {
		t.Fatalf("err = %v", err)
	}
	fake.Done()
}

// TestDetachKeepsMultipathedLUN: with the session kept, a LUN still under a
// multipath map is not yanked from under the map.
func TestDetachKeepsMultipathedLUN(t *testing.T) {
	tr := newTree(t)
	tr.addSession(1, testIQN, "127.0.0.1", 3260)
	tr.addLUN(1, 1, "sdb")
	tr.addDM("dm-7", "mpatha", "mpath-3600a", "sdb")
	tr.mount(tr.addLUN(1, 2, "sdc"), "/dev/sdc", "/mnt/c")
	fake := hostexec.NewFake(t)
	i, logs := newTestInitiator(t, tr, fake, nil)
	if err := i.Detach(context.Background(), Target{IQN: testIQN, Portals: []string{portalA}, LUN: 1}); err != nil {
		t.Fatal(err)
	}
	fake.Done()
	del, _ := os.ReadFile(filepath.Join(tr.sys, "class", "iscsi_session", "session1", "device", "target2:0:0", "2:0:0:1", "delete"))
	if len(del) != 0 {
		t.Error("SCSI device under a multipath map was removed")
	}
	if !strings.Contains(logs.String(), "multipath map still holds") {
		t.Errorf("no warning:\n%s", logs)
	}
}

// A LUN this process attached for a volume whose mount is still under way
// is not mounted yet: sysfs and mountinfo cannot see its use, and a Detach
// of another LUN of the target must not log the target out under it.
func TestDetachKeepsSessionForLUNAttachedButNotYetMounted(t *testing.T) {
	tr := newTree(t)
	tr.addSession(1, testIQN, "127.0.0.1", 3260)
	tr.addLUN(1, 1, "sdb")
	tr.addLUN(1, 2, "sdc")
	fake := hostexec.NewFake(t,
		// Attach of LUN 2: the session exists already.
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "new")},
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "update", "-n", "node.session.timeo.replacement_timeout", "-v", "15")},
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "update", "-n", "node.conn[0].timeo.login_timeout", "-v", "5")},
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "update", "-n", "node.session.initial_login_retry_max", "-v", "0")},
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "--login"), Code: 15},
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "--rescan")},
	)
	i, logs := newTestInitiator(t, tr, fake, nil)
	if _, err := i.Attach(context.Background(), Target{IQN: testIQN, Portals: []string{portalA}, LUN: 2}); err != nil {
		t.Fatal(err)
	}
	// LUN 1 is detached while LUN 2 is attached but not yet mounted.
	if err := i.Detach(context.Background(), Target{IQN: testIQN, Portals: []string{portalA}, LUN: 1}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "LUN 2 was attached by this process") {
		t.Fatalf("log does not say why the session was kept:\n%s", logs)
	}
	// Once LUN 2 is detached too, the target is logged out.
	fake.Expect(logoutCalls(portalA)...)
	if err := i.Detach(context.Background(), Target{IQN: testIQN, Portals: []string{portalA}, LUN: 2}); err != nil {
		t.Fatal(err)
	}
	fake.Done()
}

// TestDetachRetriesNodeDatabaseError: parallel record deletions of other
// targets make iscsiadm fail with its node database error (exit 6); the
// deletion is made again, up to idbmAttempts times.
func TestDetachRetriesNodeDatabaseError(t *testing.T) {
	defer func(b time.Duration) { idbmBackoff = b }(idbmBackoff)
	idbmBackoff = time.Millisecond
	target := Target{IQN: testIQN, Portals: []string{portalA}, LUN: 1}
	logout := hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "--logout")}
	idbm := hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "delete"), Code: 6,
		Stderr: "iscsiadm: Could not execute operation on all records: encountered iSCSI database failure\n"}
	del := hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "delete")}
	gone := hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "delete"), Code: 21, Stderr: "iscsiadm: No records found\n"}

	run := func(t *testing.T, calls ...hostexec.Call) (string, error) {
		tr := newTree(t)
		fake := hostexec.NewFake(t, calls...)
		i, logs := newTestInitiator(t, tr, fake, nil)
		err := i.Detach(context.Background(), target)
		fake.Done()
		return logs.String(), err
	}
	t.Run("fails twice, then deleted", func(t *testing.T) {
		logs, err := run(t, logout, idbm, idbm, del)
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(logs, "iscsiadm failed on the node database; trying again"); n != 2 {
			t.Errorf("%d retry lines in the log, want 2:\n%s", n, logs)
		}
	})
	t.Run("the failed attempt deleted the record: no records is success", func(t *testing.T) {
		if _, err := run(t, logout, idbm, gone); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("fails every time: the error after idbmAttempts", func(t *testing.T) {
		calls := []hostexec.Call{logout}
		for range idbmAttempts {
			calls = append(calls, idbm)
		}
		_, err := run(t, calls...)
		if err == nil || !strings.Contains(err.Error(), "could not read or write the open-iscsi node database") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("logout is not retried", func(t *testing.T) {
		_, err := run(t, hostexec.Call{Argv: logout.Argv, Code: 6, Stderr: "iscsiadm: encountered iSCSI database failure\n"})
		if err == nil {
			t.Fatal("Detach succeeded")
		}
	})
}
