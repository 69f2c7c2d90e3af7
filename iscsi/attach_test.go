package iscsi

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/internal/sentinel"
)

const (
	secret       = "s3cr3t-Passw0rd"
	mutualSecret = "mutual-S3cret!"
	discSecret   = "disc-S3cret!"
)

// TestAttachArgv checks the exact iscsiadm sequence of each attach flavour
// against a sysfs tree where the device is already present.
func TestAttachArgv(t *testing.T) {
	node := func(rest ...string) []string {
		return adm(append([]string{"-m", "node", "-T", testIQN, "-p", portalA}, rest...)...)
	}
	tests := []struct {
		name   string
		target Target
		iface  string
		calls  []hostexec.Call
	}{{
		name:   "explicit node, no CHAP: no auth update",
		target: Target{IQN: testIQN, Portals: []string{portalA}, LUN: 1},
		calls: []hostexec.Call{
			{Argv: []string{"iscsiadm", "-m", "node", "-T", testIQN, "-p", "127.0.0.1:3260", "-o", "new"}},
			{Argv: []string{"iscsiadm", "-m", "node", "-T", testIQN, "-p", "127.0.0.1:3260", "-o", "update", "-n", "node.session.timeo.replacement_timeout", "-v", "15"}},
			{Argv: []string{"iscsiadm", "-m", "node", "-T", testIQN, "-p", "127.0.0.1:3260", "-o", "update", "-n", "node.conn[0].timeo.login_timeout", "-v", "5"}},
			{Argv: []string{"iscsiadm", "-m", "node", "-T", testIQN, "-p", "127.0.0.1:3260", "-o", "update", "-n", "node.session.initial_login_retry_max", "-v", "0"}},
			{Argv: []string{"iscsiadm", "-m", "node", "-T", testIQN, "-p", "127.0.0.1:3260", "--login"}},
		},
	}, {
		name:   "portal without port gets 3260",
		target: Target{IQN: testIQN, Portals: []string{"127.0.0.1"}, LUN: 1},
		calls: []hostexec.Call{
			{Argv: node("-o", "new")},
			{Argv: node("-o", "update", "-n", "node.session.timeo.replacement_timeout", "-v", "15")},
			{Argv: node("-o", "update", "-n", "node.conn[0].timeo.login_timeout", "-v", "5")},
			{Argv: node("-o", "update", "-n", "node.session.initial_login_retry_max", "-v", "0")},
			{Argv: node("--login")},
		},
	}, {
		name:   "CHAP",
		target: Target{IQN: testIQN, Portals: []string{portalA}, LUN: 1, CHAP: &CHAP{Username: "user", Password: secret}},
		calls: []hostexec.Call{
			{Argv: node("-o", "new")},
			{Argv: node("-o", "update", "-n", "node.session.timeo.replacement_timeout", "-v", "15")},
			{Argv: node("-o", "update", "-n", "node.conn[0].timeo.login_timeout", "-v", "5")},
			{Argv: node("-o", "update", "-n", "node.session.initial_login_retry_max", "-v", "0")},
			{Argv: node("-o", "update", "-n", "node.session.auth.authmethod", "-v", "CHAP")},
			{Argv: node("-o", "update", "-n", "node.session.auth.username", "-v", "user")},
			{Argv: node("-o", "update", "-n", "node.session.auth.password", "-v", secret)},
			{Argv: node("--login")},
		},
	}, {
		name: "mutual CHAP",
		target: Target{IQN: testIQN, Portals: []string{portalA}, LUN: 1,
			CHAP: &CHAP{Username: "user", Password: secret, MutualUsername: "tgt", MutualPassword: mutualSecret}},
		calls: []hostexec.Call{
			{Argv: node("-o", "new")},
			{Argv: node("-o", "update", "-n", "node.session.timeo.replacement_timeout", "-v", "15")},
			{Argv: node("-o", "update", "-n", "node.conn[0].timeo.login_timeout", "-v", "5")},
			{Argv: node("-o", "update", "-n", "node.session.initial_login_retry_max", "-v", "0")},
			{Argv: node("-o", "update", "-n", "node.session.auth.authmethod", "-v", "CHAP")},
			{Argv: node("-o", "update", "-n", "node.session.auth.username", "-v", "user")},
			{Argv: node("-o", "update", "-n", "node.session.auth.password", "-v", secret)},
			{Argv: node("-o", "update", "-n", "node.session.auth.username_in", "-v", "tgt")},
			{Argv: node("-o", "update", "-n", "node.session.auth.password_in", "-v", mutualSecret)},
			{Argv: node("--login")},
		},
	}, {
		name:   "discovery without CHAP",
		target: Target{IQN: testIQN, Portals: []string{portalA}, LUN: 1, Discovery: true},
		calls: []hostexec.Call{
			{Argv: adm("-m", "discoverydb", "-t", "sendtargets", "-p", portalA, "--discover"),
				Stdout: portalA + ",1 " + testIQN + "\n"},
			{Argv: node("-o", "update", "-n", "node.session.timeo.replacement_timeout", "-v", "15")},
			{Argv: node("-o", "update", "-n", "node.conn[0].timeo.login_timeout", "-v", "5")},
			{Argv: node("-o", "update", "-n", "node.session.initial_login_retry_max", "-v", "0")},
			{Argv: node("--login")},
		},
	}, {
		name: "discovery with discovery CHAP and session CHAP",
		target: Target{IQN: testIQN, Portals: []string{portalA}, LUN: 1, Discovery: true,
			DiscoveryCHAP: &CHAP{Username: "duser", Password: discSecret},
			CHAP:          &CHAP{Username: "user", Password: secret}},
		calls: []hostexec.Call{
			{Argv: adm("-m", "discoverydb", "-t", "sendtargets", "-p", portalA, "-o", "new")},
			{Argv: adm("-m", "discoverydb", "-t", "sendtargets", "-p", portalA, "-o", "update", "-n", "discovery.sendtargets.auth.authmethod", "-v", "CHAP")},
			{Argv: adm("-m", "discoverydb", "-t", "sendtargets", "-p", portalA, "-o", "update", "-n", "discovery.sendtargets.auth.username", "-v", "duser")},
			{Argv: adm("-m", "discoverydb", "-t", "sendtargets", "-p", portalA, "-o", "update", "-n", "discovery.sendtargets.auth.password", "-v", discSecret)},
			{Argv: adm("-m", "discoverydb", "-t", "sendtargets", "-p", portalA, "--discover")},
			{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "update", "-n", "node.session.timeo.replacement_timeout", "-v", "15")},
			{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "update", "-n", "node.conn[0].timeo.login_timeout", "-v", "5")},
			{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "update", "-n", "node.session.initial_login_retry_max", "-v", "0")},
			{Argv: node("-o", "update", "-n", "node.session.auth.authmethod", "-v", "CHAP")},
			{Argv: node("-o", "update", "-n", "node.session.auth.username", "-v", "user")},
			{Argv: node("-o", "update", "-n", "node.session.auth.password", "-v", secret)},
			{Argv: node("--login")},
		},
	}, {
		name:   "iface on every call",
		iface:  "iface0",
		target: Target{IQN: testIQN, Portals: []string{portalA}, LUN: 1, Discovery: true, CHAP: &CHAP{Username: "user", Password: secret}},
		calls: []hostexec.Call{
			{Argv: adm("-m", "discoverydb", "-t", "sendtargets", "-p", portalA, "-I", "iface0", "--discover")},
			{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-I", "iface0", "-o", "update", "-n", "node.session.timeo.replacement_timeout", "-v", "15")},
			{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-I", "iface0", "-o", "update", "-n", "node.conn[0].timeo.login_timeout", "-v", "5")},
			{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-I", "iface0", "-o", "update", "-n", "node.session.initial_login_retry_max", "-v", "0")},
			{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-I", "iface0", "-o", "update", "-n", "node.session.auth.authmethod", "-v", "CHAP")},
			{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-I", "iface0", "-o", "update", "-n", "node.session.auth.username", "-v", "user")},
			{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-I", "iface0", "-o", "update", "-n", "node.session.auth.password", "-v", secret)},
			{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-I", "iface0", "--login")},
		},
	}, {
		name:   "session exists (exit 15) is success and the session is rescanned",
		target: Target{IQN: testIQN, Portals: []string{portalA}, LUN: 1},
		calls: []hostexec.Call{
			{Argv: node("-o", "new")},
			{Argv: node("-o", "update", "-n", "node.session.timeo.replacement_timeout", "-v", "15")},
			{Argv: node("-o", "update", "-n", "node.conn[0].timeo.login_timeout", "-v", "5")},
			{Argv: node("-o", "update", "-n", "node.session.initial_login_retry_max", "-v", "0")},
			{Argv: node("--login"), Code: 15, Stderr: "iscsiadm: default: 1 session requested, but 1 already present.\n"},
			{Argv: node("--rescan")},
		},
	}, {
		name:   "failed rescan after exit 15 is only a warning",
		target: Target{IQN: testIQN, Portals: []string{portalA}, LUN: 1},
		calls: []hostexec.Call{
			{Argv: node("-o", "new")},
			{Argv: node("-o", "update", "-n", "node.session.timeo.replacement_timeout", "-v", "15")},
			{Argv: node("-o", "update", "-n", "node.conn[0].timeo.login_timeout", "-v", "5")},
			{Argv: node("-o", "update", "-n", "node.session.initial_login_retry_max", "-v", "0")},
			{Argv: node("--login"), Code: 15},
			{Argv: node("--rescan"), Code: 21},
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTree(t)
			tr.addSession(1, testIQN, "127.0.0.1", 3260)
			tr.addLUN(1, 1, "sdb")
			fake := hostexec.NewFake(t, tc.calls...)
			i, logs := newTestInitiator(t, tr, fake, func(c *Config) { c.Iface = tc.iface })
			dev, err := i.Attach(context.Background(), tc.target)
			if err != nil {
				t.Fatalf("Attach: %v", err)
			}
			fake.Done()
			if want := filepath.Join(tr.dev, "sdb"); dev != want {
				t.Errorf("device = %q, want %q", dev, want)
			}
			for _, s := range []string{secret, mutualSecret, discSecret} {
				if strings.Contains(logs.String(), s) {
					t.Errorf("log contains a CHAP secret:\n%s", logs)
				}
			}
		})
	}
}

func TestAttachPrefersByPathLink(t *testing.T) {
	tr := newTree(t)
	tr.addSession(3, testIQN, "127.0.0.1", 3260)
	tr.addSession(4, "iqn.2003-01.org.example:other", "127.0.0.1", 3260)
	tr.addLUN(4, 1, "sdc") // same LUN number, other target: must be ignored
	tr.addLUN(3, 0, "sdd") // other LUN of our target
	tr.addLUN(3, 1, "sde")
	link := tr.addByPath("127.0.0.1", 3260, testIQN, 1, "sde")
	// A stale link to another device is not trusted.
	tr.addByPath("127.0.0.1", 3260, testIQN, 0, "sdc")

	fake := hostexec.NewFake(t,
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "new")},
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "update", "-n", "node.session.timeo.replacement_timeout", "-v", "15")},
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "update", "-n", "node.conn[0].timeo.login_timeout", "-v", "5")},
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "update", "-n", "node.session.initial_login_retry_max", "-v", "0")},
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "--login")},
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "new")},
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "update", "-n", "node.session.timeo.replacement_timeout", "-v", "15")},
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "update", "-n", "node.conn[0].timeo.login_timeout", "-v", "5")},
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "update", "-n", "node.session.initial_login_retry_max", "-v", "0")},
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "--login"), Code: 15},
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "--rescan")},
	)
	i, _ := newTestInitiator(t, tr, fake, nil)
	dev, err := i.Attach(context.Background(), Target{IQN: testIQN, Portals: []string{portalA}, LUN: 1})
	if err != nil || dev != link {
		t.Fatalf("Attach = %q, %v; want %q", dev, err, link)
	}
	dev, err = i.Attach(context.Background(), Target{IQN: testIQN, Portals: []string{portalA}, LUN: 0})
	if want := filepath.Join(tr.dev, "sdd"); err != nil || dev != want {
		t.Fatalf("Attach LUN 0 = %q, %v; want %q (stale by-path link must be ignored)", dev, err, want)
	}
	fake.Done()
}

func TestAttachTwoPortals(t *testing.T) {
	twoPortals := func(t *testing.T, rest ...hostexec.Call) *byPortal {
		return newByPortal(t, map[string][]hostexec.Call{portalA: tuned(portalA, 0), portalB: tuned(portalB, 0)}, rest...)
	}
	target := Target{IQN: testIQN, Portals: []string{portalA, portalB}, LUN: 2}

	t.Run("no multipathd: one path and a warning", func(t *testing.T) {
		tr := newTree(t)
		tr.addSession(1, testIQN, "127.0.0.1", 3260)
		tr.addSession(2, testIQN, "127.0.0.2", 3260)
		tr.addLUN(1, 2, "sdb")
		tr.addLUN(2, 2, "sdc")
		fake := twoPortals(t)
		i, logs := newTestInitiator(t, tr, fake, nil)
		dev, err := i.Attach(context.Background(), target)
		if err != nil {
			t.Fatal(err)
		}
		fake.Done()
		if want := filepath.Join(tr.dev, "sdb"); dev != want {
			t.Errorf("device = %q, want %q", dev, want)
		}
		if l := logs.String(); !strings.Contains(l, "level=WARN") || !strings.Contains(l, "multipathd is not running") ||
			!strings.Contains(l, "portals=\"127.0.0.1:3260, 127.0.0.2:3260\"") {
			t.Errorf("missing single-path warning with attributes:\n%s", l)
		}
	})

	t.Run("multipathd running: the dm map over both paths", func(t *testing.T) {
		tr := newTree(t)
		tr.addSession(1, testIQN, "127.0.0.1", 3260)
		tr.addSession(2, testIQN, "127.0.0.2", 3260)
		tr.addLUN(1, 2, "sdb")
		tr.addLUN(2, 2, "sdc")
		// The map appears a little after the paths, as multipathd builds it.
		built := make(chan struct{})
		fake := twoPortals(t, hostexec.Call{
			Argv: []string{"multipathd", "show", "daemon"}, Stdout: "pid 812 idle\n",
			Do: func() {
				go func() {
					defer close(built)
					time.Sleep(50 * time.Millisecond)
					tr.addDM("dm-3", "mpatha", "mpath-36001405abcdef", "sdb", "sdc")
				}()
			},
		})
		defer func() { <-built }()
		i, _ := newTestInitiator(t, tr, fake, func(c *Config) { c.MultipathActive = nil })
		dev, err := i.Attach(context.Background(), target)
		if err != nil {
			t.Fatal(err)
		}
		fake.Done()
		if want := filepath.Join(tr.dev, "mapper", "mpatha"); dev != want {
			t.Errorf("device = %q, want %q", dev, want)
		}
	})

	t.Run("multipathd running but no map: error after DeviceTimeout", func(t *testing.T) {
		tr := newTree(t)
		tr.addSession(1, testIQN, "127.0.0.1", 3260)
		tr.addSession(2, testIQN, "127.0.0.2", 3260)
		tr.addLUN(1, 2, "sdb")
		tr.addLUN(2, 2, "sdc")
		tr.addDM("dm-4", "vg-lv", "LVM-xyz", "sdb") // not a multipath map
		fake := twoPortals(t)
		i, _ := newTestInitiator(t, tr, fake, func(c *Config) {
			c.MultipathActive = func(context.Context) bool { return true }
			c.DeviceTimeout = 200 * time.Millisecond
		})
		_, err := i.Attach(context.Background(), target)
		if !errors.Is(err, ErrDeviceNotFound) || !strings.Contains(err.Error(), "sdb, sdc") || !strings.Contains(err.Error(), testIQN) {
			t.Fatalf("err = %v", err)
		}
		fake.Done()
	})

	t.Run("one portal down: attach through the other, with a warning", func(t *testing.T) {
		tr := newTree(t)
		tr.addSession(2, testIQN, "127.0.0.2", 3260)
		tr.addLUN(2, 2, "sdc")
		fake := newByPortal(t, map[string][]hostexec.Call{portalA: tuned(portalA, 8), portalB: tuned(portalB, 0)})
		i, logs := newTestInitiator(t, tr, fake, nil)
		dev, err := i.Attach(context.Background(), target)
		if err != nil {
			t.Fatal(err)
		}
		fake.Done()
		if want := filepath.Join(tr.dev, "sdc"); dev != want {
			t.Errorf("device = %q, want %q", dev, want)
		}
		if !strings.Contains(logs.String(), "portal failed") {
			t.Errorf("no warning about the failed portal:\n%s", logs)
		}
	})

	t.Run("both portals down: both named", func(t *testing.T) {
		tr := newTree(t)
		fake := newByPortal(t, map[string][]hostexec.Call{portalA: tuned(portalA, 4), portalB: tuned(portalB, 8)})
		i, _ := newTestInitiator(t, tr, fake, nil)
		_, err := i.Attach(context.Background(), target)
		if err == nil || !strings.Contains(err.Error(), portalA) || !strings.Contains(err.Error(), portalB) ||
			!errors.Is(err, ErrUnreachable) || !errors.Is(err, ErrTimeout) {
			t.Fatalf("err = %v", err)
		}
		fake.Done()
	})
}

// TestAttachErrors checks the message and class of iscsiadm failures, and
// that no secret leaks into them.
func TestAttachErrors(t *testing.T) {
	chap := &CHAP{Username: "user", Password: secret}
	node := func(rest ...string) []string {
		return adm(append([]string{"-m", "node", "-T", testIQN, "-p", portalA}, rest...)...)
	}
	updates := []hostexec.Call{
		{Argv: node("-o", "update", "-n", "node.session.auth.authmethod", "-v", "CHAP")},
		{Argv: node("-o", "update", "-n", "node.session.auth.username", "-v", "user")},
		{Argv: node("-o", "update", "-n", "node.session.auth.password", "-v", secret)},
	}
	withLogin := func(code int, stderr string) []hostexec.Call {
		calls := append([]hostexec.Call{
			{Argv: node("-o", "new")},
			{Argv: node("-o", "update", "-n", "node.session.timeo.replacement_timeout", "-v", "15")},
			{Argv: node("-o", "update", "-n", "node.conn[0].timeo.login_timeout", "-v", "5")},
			{Argv: node("-o", "update", "-n", "node.session.initial_login_retry_max", "-v", "0")},
		}, updates...)
		return append(calls, hostexec.Call{Argv: node("--login"), Code: code, Stderr: stderr})
	}
	tests := []struct {
		name  string
		calls []hostexec.Call
		kind  error
		msg   string
	}{{
		name: "auth failure 24",
		calls: withLogin(24, "iscsiadm: Could not login to [iface: default, target: "+testIQN+", portal: 127.0.0.1,3260].\n"+
			"iscsiadm: initiator reported error (24 - iSCSI login failed due to authorization failure)\n"),
		kind: ErrAuth,
		msg:  "iSCSI login to " + testIQN + " at 127.0.0.1:3260 failed: authorization failure (check CHAP credentials)",
	}, {
		name:  "fatal login 19",
		calls: withLogin(19, ""),
		kind:  ErrAuth,
		msg:   "iSCSI login to " + testIQN + " at 127.0.0.1:3260 failed: the target rejected the login (check CHAP credentials, the IQN and the target's ACL for this initiator name)",
	}, {
		name:  "timeout 8",
		calls: withLogin(8, ""),
		kind:  ErrTimeout,
		msg:   "iSCSI login to " + testIQN + " at 127.0.0.1:3260 failed: timed out connecting to the portal (check the network and firewalls)",
	}, {
		name:  "no record 21",
		calls: withLogin(21, "iscsiadm: No records found\n"),
		kind:  ErrNoTarget,
		msg:   "iSCSI login to " + testIQN + " at 127.0.0.1:3260 failed: no node record or session",
	}, {
		name:  "iscsid down 20",
		calls: withLogin(20, "iscsiadm: can not connect to iSCSI daemon (111)!\n"),
		kind:  ErrDaemon,
		msg:   "is the iscsid service running?",
	}, {
		name: "update failure with the secret on stderr",
		calls: []hostexec.Call{
			{Argv: node("-o", "new")},
			{Argv: node("-o", "update", "-n", "node.session.timeo.replacement_timeout", "-v", "15")},
			{Argv: node("-o", "update", "-n", "node.conn[0].timeo.login_timeout", "-v", "5")},
			{Argv: node("-o", "update", "-n", "node.session.initial_login_retry_max", "-v", "0")},
			updates[0], updates[1],
			{Argv: updates[2].Argv, Code: 7, Stderr: "iscsiadm: Cannot set value " + secret + "\n"},
		},
		kind: sentinel.ErrInvalid,
		msg:  "iSCSI node record update for " + testIQN + " at 127.0.0.1:3260 failed: iscsiadm rejected an argument",
	}, {
		name:  "unknown status quotes stderr",
		calls: withLogin(1, "iscsiadm: something odd\n"),
		msg:   "failed: iscsiadm exited with status 1 (iscsiadm: something odd)",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTree(t)
			fake := hostexec.NewFake(t, tc.calls...)
			i, logs := newTestInitiator(t, tr, fake, nil)
			_, err := i.Attach(context.Background(), Target{IQN: testIQN, Portals: []string{portalA}, LUN: 0, CHAP: chap})
			fake.Done()
			if err == nil {
				t.Fatal("Attach succeeded")
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q\ndoes not contain %q", err, tc.msg)
			}
			if tc.kind != nil && !errors.Is(err, tc.kind) {
				t.Errorf("error %v is not %v", err, tc.kind)
			}
			var ee *hostexec.ExitError
			if !errors.As(err, &ee) {
				t.Fatalf("error %v does not wrap the iscsiadm exit error", err)
			}
			all := err.Error() + "\n" + strings.Join(ee.Argv, " ") + "\n" + ee.Stderr + "\n" + logs.String()
			if strings.Contains(all, secret) {
				t.Errorf("secret leaked:\n%s", all)
			}
		})
	}
}

// TestAttachLoginTimeout: a login that hangs is killed after LoginTimeout,
// reported as a timeout, and the pending login is cancelled with a logout.
func TestAttachLoginTimeout(t *testing.T) {
	tr := newTree(t)
	login := adm("-m", "node", "-T", testIQN, "-p", portalA, "--login")
	fake := hostexec.NewFake(t,
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "new")},
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "update", "-n", "node.session.timeo.replacement_timeout", "-v", "15")},
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "update", "-n", "node.conn[0].timeo.login_timeout", "-v", "5")},
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "update", "-n", "node.session.initial_login_retry_max", "-v", "0")},
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "--logout"), Code: 21},
	)
	i, _ := newTestInitiator(t, tr, blockOn{Runner: fake, argv: login}, func(c *Config) { c.LoginTimeout = 100 * time.Millisecond })
	start := time.Now()
	_, err := i.Attach(context.Background(), Target{IQN: testIQN, Portals: []string{portalA}, LUN: 0})
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "did not finish within 100ms") || !strings.Contains(err.Error(), portalA) {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Attach took %s", d)
	}
	fake.Done()
}

// TestAttachDeviceLater: the LUN's device shows up 200ms after the login.
func TestAttachDeviceLater(t *testing.T) {
	tr := newTree(t)
	created := make(chan struct{})
	tr.addSession(1, testIQN, "127.0.0.1", 3260)
	fake := hostexec.NewFake(t,
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "new")},
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "update", "-n", "node.session.timeo.replacement_timeout", "-v", "15")},
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "update", "-n", "node.conn[0].timeo.login_timeout", "-v", "5")},
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "update", "-n", "node.session.initial_login_retry_max", "-v", "0")},
		hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "--login"), Do: func() {
			go func() {
				defer close(created)
				time.Sleep(200 * time.Millisecond)
				tr.addLUN(1, 5, "sdf")
			}()
		}},
	)
	defer func() { <-created }()
	i, _ := newTestInitiator(t, tr, fake, nil)
	start := time.Now()
	dev, err := i.Attach(context.Background(), Target{IQN: testIQN, Portals: []string{portalA}, LUN: 5})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("Attach returned after %s, before the device existed", d)
	}
	if want := filepath.Join(tr.dev, "sdf"); dev != want {
		t.Errorf("device = %q, want %q", dev, want)
	}
	fake.Done()
}

func TestAttachDeviceNeverAppears(t *testing.T) {
	tr := newTree(t)
	tr.addSession(1, testIQN, "127.0.0.1", 3260)
	tr.addLUN(1, 0, "sdb") // another LUN is there, not ours
	calls := func() []hostexec.Call {
		return []hostexec.Call{
			{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "new")},
			{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "update", "-n", "node.session.timeo.replacement_timeout", "-v", "15")},
			{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "update", "-n", "node.conn[0].timeo.login_timeout", "-v", "5")},
			{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "update", "-n", "node.session.initial_login_retry_max", "-v", "0")},
			{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "--login")},
		}
	}
	target := Target{IQN: testIQN, Portals: []string{portalA}, LUN: 7}

	t.Run("DeviceTimeout", func(t *testing.T) {
		fake := hostexec.NewFake(t, calls()...)
		i, _ := newTestInitiator(t, tr, fake, func(c *Config) { c.DeviceTimeout = 300 * time.Millisecond })
		start := time.Now()
		_, err := i.Attach(context.Background(), target)
		d := time.Since(start)
		if !errors.Is(err, ErrDeviceNotFound) {
			t.Fatalf("err = %v", err)
		}
		for _, want := range []string{"LUN 7", testIQN, portalA, "within 300ms"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not name %q", err, want)
			}
		}
		if d < 300*time.Millisecond || d > 2*time.Second {
			t.Errorf("Attach gave up after %s, want about 300ms", d)
		}
		fake.Done()
	})

	t.Run("context cancelled", func(t *testing.T) {
		fake := hostexec.NewFake(t, calls()...)
		i, _ := newTestInitiator(t, tr, fake, func(c *Config) { c.DeviceTimeout = time.Minute })
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(100*time.Millisecond, cancel)
		start := time.Now()
		_, err := i.Attach(ctx, target)
		if !errors.Is(err, context.Canceled) || errors.Is(err, ErrDeviceNotFound) {
			t.Fatalf("err = %v", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("cancellation honoured only after %s", d)
		}
		fake.Done()
	})
}

func TestAttachInvalid(t *testing.T) {
	tests := []Target{
		{IQN: "", Portals: []string{portalA}},
		{IQN: testIQN},
		{IQN: testIQN, Portals: []string{"storage.example.com:3260"}},
		{IQN: testIQN, Portals: []string{"127.0.0.1:99999"}},
		{IQN: testIQN, Portals: []string{portalA}, LUN: -1},
		{IQN: testIQN, Portals: []string{portalA}, CHAP: &CHAP{Username: "u"}},
		{IQN: testIQN, Portals: []string{portalA}, CHAP: &CHAP{Username: "u", Password: secret, MutualUsername: "m"}},
		{IQN: testIQN, Portals: []string{portalA}, DiscoveryCHAP: &CHAP{Password: secret}},
	}
	for _, tc := range tests {
		fake := hostexec.NewFake(t)
		i, _ := newTestInitiator(t, newTree(t), fake, nil)
		if _, err := i.Attach(context.Background(), tc); !errors.Is(err, sentinel.ErrInvalid) {
			t.Errorf("Attach(%+v) = %v, want sentinel.ErrInvalid", tc, err)
		} else if strings.Contains(err.Error(), secret) {
			t.Errorf("secret in %v", err)
		}
		if err := i.Detach(context.Background(), tc); !errors.Is(err, sentinel.ErrInvalid) {
			t.Errorf("Detach(%+v) = %v, want sentinel.ErrInvalid", tc, err)
		}
		fake.Done()
	}
}

func TestParsePortal(t *testing.T) {
	tests := map[string]string{
		"10.0.0.1:3260":      "10.0.0.1:3260",
		"10.0.0.1":           "10.0.0.1:3260",
		"10.0.0.1:3261":      "10.0.0.1:3261",
		"[fd00::1]:3260":     "[fd00::1]:3260",
		"fd00::1":            "[fd00::1]:3260",
		"[fd00::1]":          "[fd00::1]:3260",
		"host.example:3260":  "",
		"10.0.0.1:notaport":  "",
		"":                   "",
		"10.0.0.1:0":         "",
		"10.0.0.1:3260:3260": "",
	}
	for in, want := range tests {
		p, err := parsePortal(in)
		if want == "" {
			if err == nil {
				t.Errorf("parsePortal(%q) = %q, want error", in, p.arg)
			}
			continue
		}
		if err != nil || p.arg != want {
			t.Errorf("parsePortal(%q) = %q, %v; want %q", in, p.arg, err, want)
		}
	}
}

func TestRedactArgv(t *testing.T) {
	argv := adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "update", "-n", "node.session.auth.password_in", "-v", secret)
	got := strings.Join(redactArgv(argv), " ")
	if strings.Contains(got, secret) || !strings.Contains(got, "-v "+redacted) {
		t.Errorf("redactArgv = %q", got)
	}
	user := adm("-m", "node", "-o", "update", "-n", "node.session.auth.username", "-v", "alice")
	if got := redactArgv(user); got[len(got)-1] != "alice" {
		t.Errorf("username redacted: %q", got)
	}
	if argv[len(argv)-1] != secret {
		t.Error("redactArgv modified its input")
	}
}

// TestAttachMultipathChecks covers the default multipathd probe and a single
// path that multipathd has already claimed.
func TestAttachMultipathChecks(t *testing.T) {
	t.Run("multipathd not answering: single path", func(t *testing.T) {
		tr := newTree(t)
		tr.addSession(1, testIQN, "127.0.0.1", 3260)
		tr.addSession(2, testIQN, "127.0.0.2", 3260)
		tr.addLUN(1, 0, "sdb")
		tr.addLUN(2, 0, "sdc")
		fake := newByPortal(t, map[string][]hostexec.Call{portalA: tuned(portalA, 0), portalB: tuned(portalB, 0)},
			hostexec.Call{Argv: []string{"multipathd", "show", "daemon"}, Code: 1, Stderr: "can't connect to socket\n"})
		i, logs := newTestInitiator(t, tr, fake, func(c *Config) { c.MultipathActive = nil })
		dev, err := i.Attach(context.Background(), Target{IQN: testIQN, Portals: []string{portalA, portalB}})
		if want := filepath.Join(tr.dev, "sdb"); err != nil || dev != want {
			t.Fatalf("Attach = %q, %v; want %q", dev, err, want)
		}
		fake.Done()
		if !strings.Contains(logs.String(), "multipathd is not running") {
			t.Errorf("no single-path warning:\n%s", logs)
		}
	})

	t.Run("single path already in a multipath map: the map", func(t *testing.T) {
		tr := newTree(t)
		tr.addSession(1, testIQN, "127.0.0.1", 3260)
		tr.addLUN(1, 0, "sdb")
		tr.addDM("dm-2", "mpathc", "mpath-3600c", "sdb")
		fake := hostexec.NewFake(t,
			hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "new")},
			hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "update", "-n", "node.session.timeo.replacement_timeout", "-v", "15")},
			hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "update", "-n", "node.conn[0].timeo.login_timeout", "-v", "5")},
			hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "-o", "update", "-n", "node.session.initial_login_retry_max", "-v", "0")},
			hostexec.Call{Argv: adm("-m", "node", "-T", testIQN, "-p", portalA, "--login")},
		)
		i, _ := newTestInitiator(t, tr, fake, nil)
		dev, err := i.Attach(context.Background(), Target{IQN: testIQN, Portals: []string{portalA}})
		if want := filepath.Join(tr.dev, "mapper", "mpathc"); err != nil || dev != want {
			t.Fatalf("Attach = %q, %v; want %q", dev, err, want)
		}
		fake.Done()
	})
}

// TestAttachRetriesNodeDatabaseError: a record creation and a record
// update that fail with iscsiadm's node database error (exit 6, another
// iscsiadm's record operation at the same time) are made again; the login
// itself is not.
func TestAttachRetriesNodeDatabaseError(t *testing.T) {
	defer func(b time.Duration) { idbmBackoff = b }(idbmBackoff)
	idbmBackoff = time.Millisecond
	const dbErr = "iscsiadm: Could not add new record: encountered iSCSI database failure\n"
	tr := newTree(t)
	tr.addSession(1, testIQN, "127.0.0.1", 3260)
	tr.addLUN(1, 1, "sdb")
	ok := tuned(portalA, 0) // new, 3 updates, login
	failed := func(c hostexec.Call) hostexec.Call { return hostexec.Call{Argv: c.Argv, Code: 6, Stderr: dbErr} }
	fake := hostexec.NewFake(t, failed(ok[0]), ok[0], ok[1], failed(ok[2]), failed(ok[2]), ok[2], ok[3], ok[4])
	i, _ := newTestInitiator(t, tr, fake, nil)
	if _, err := i.Attach(context.Background(), Target{IQN: testIQN, Portals: []string{portalA}, LUN: 1}); err != nil {
		t.Fatal(err)
	}
	fake.Done()

	// A login failing so is reported, not made again.
	fake = hostexec.NewFake(t, ok[0], ok[1], ok[2], ok[3], failed(ok[4]))
	i, _ = newTestInitiator(t, tr, fake, nil)
	if _, err := i.Attach(context.Background(), Target{IQN: testIQN, Portals: []string{portalA}, LUN: 1}); err == nil {
		t.Fatal("Attach succeeded with the login failing")
	}
	fake.Done()
}
