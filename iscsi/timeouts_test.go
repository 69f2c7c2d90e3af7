package iscsi

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/internal/sentinel"
)

// TestAttachSessionTimeouts: the configured timeouts reach the node record
// as whole seconds, rounded up, before the login.
func TestAttachSessionTimeouts(t *testing.T) {
	node := func(rest ...string) []string {
		return adm(append([]string{"-m", "node", "-T", testIQN, "-p", portalA}, rest...)...)
	}
	tr := newTree(t)
	tr.addSession(1, testIQN, "127.0.0.1", 3260)
	tr.addLUN(1, 1, "sdb")
	fake := hostexec.NewFake(t,
		hostexec.Call{Argv: node("-o", "new")},
		hostexec.Call{Argv: node("-o", "update", "-n", "node.session.timeo.replacement_timeout", "-v", "20")},
		hostexec.Call{Argv: node("-o", "update", "-n", "node.conn[0].timeo.login_timeout", "-v", "3")},
		hostexec.Call{Argv: node("-o", "update", "-n", "node.session.initial_login_retry_max", "-v", "0")},
		hostexec.Call{Argv: node("--login")},
	)
	i, _ := newTestInitiator(t, tr, fake, func(c *Config) {
		c.ReplacementTimeout = 20 * time.Second
		c.PortalLoginTimeout = 2500 * time.Millisecond
	})
	if _, err := i.Attach(context.Background(), Target{IQN: testIQN, Portals: []string{portalA}, LUN: 1}); err != nil {
		t.Fatal(err)
	}
	fake.Done()
}

// TestAttachExistingSessionRecoveryTimeout: a session that was already
// logged in (with iscsid.conf's 120 s) gets the configured recovery
// timeout through sysfs; the session of another portal is left alone.
func TestAttachExistingSessionRecoveryTimeout(t *testing.T) {
	node := func(rest ...string) []string {
		return adm(append([]string{"-m", "node", "-T", testIQN, "-p", portalA}, rest...)...)
	}
	tr := newTree(t)
	tr.addSession(1, testIQN, "127.0.0.1", 3260)
	tr.addSession(2, testIQN, "127.0.0.2", 3260)
	tr.addLUN(1, 1, "sdb")
	tmo := func(n string) string { return filepath.Join(tr.sys, "class", "iscsi_session", n, "recovery_tmo") }
	tr.write(tmo("session1"), "120\n")
	tr.write(tmo("session2"), "120\n")
	fake := hostexec.NewFake(t,
		hostexec.Call{Argv: node("-o", "new")},
		hostexec.Call{Argv: node("-o", "update", "-n", "node.session.timeo.replacement_timeout", "-v", "15")},
		hostexec.Call{Argv: node("-o", "update", "-n", "node.conn[0].timeo.login_timeout", "-v", "5")},
		hostexec.Call{Argv: node("-o", "update", "-n", "node.session.initial_login_retry_max", "-v", "0")},
		hostexec.Call{Argv: node("--login"), Code: 15},
		hostexec.Call{Argv: node("--rescan")},
	)
	i, _ := newTestInitiator(t, tr, fake, nil)
	if _, err := i.Attach(context.Background(), Target{IQN: testIQN, Portals: []string{portalA}, LUN: 1}); err != nil {
		t.Fatal(err)
	}
	fake.Done()
	for n, want := range map[string]string{"session1": "15", "session2": "120"} {
		if b, _ := os.ReadFile(tmo(n)); strings.TrimSpace(string(b)) != want {
			t.Errorf("%s recovery_tmo = %q, want %s", n, b, want)
		}
	}
}

// TestAttachPortalsInParallel: the second portal's login starts while the
// first one's is still under way.
func TestAttachPortalsInParallel(t *testing.T) {
	tr := newTree(t)
	tr.addSession(1, testIQN, "127.0.0.1", 3260)
	tr.addSession(2, testIQN, "127.0.0.2", 3260)
	tr.addLUN(1, 2, "sdb")
	tr.addLUN(2, 2, "sdc")
	bStarted := make(chan struct{})
	a, b := tuned(portalA, 0), tuned(portalB, 0)
	a[len(a)-1].Do = func() {
		select {
		case <-bStarted:
		case <-time.After(10 * time.Second):
			t.Errorf("portal B's login did not start while portal A's was under way")
		}
	}
	b[len(b)-1].Do = func() { close(bStarted) }
	fake := newByPortal(t, map[string][]hostexec.Call{portalA: a, portalB: b})
	i, _ := newTestInitiator(t, tr, fake, nil)
	if _, err := i.Attach(context.Background(), Target{IQN: testIQN, Portals: []string{portalA, portalB}, LUN: 2}); err != nil {
		t.Fatal(err)
	}
	fake.Done()
}

// TestAttachDiscoveryBeforeTuning: with discovery, every portal's
// sendtargets discovery (which rewrites the records of all the target's
// portals) ends before any record is tuned.
func TestAttachDiscoveryBeforeTuning(t *testing.T) {
	tr := newTree(t)
	tr.addSession(1, testIQN, "127.0.0.1", 3260)
	tr.addSession(2, testIQN, "127.0.0.2", 3260)
	tr.addLUN(1, 2, "sdb")
	tr.addLUN(2, 2, "sdc")
	script := func(p string) []hostexec.Call {
		calls := tuned(p, 0)
		calls[0] = hostexec.Call{Argv: adm("-m", "discoverydb", "-t", "sendtargets", "-p", p, "--discover"),
			Stdout: portalA + ",1 " + testIQN + "\n" + portalB + ",1 " + testIQN + "\n"}
		return calls
	}
	fake := newByPortal(t, map[string][]hostexec.Call{portalA: script(portalA), portalB: script(portalB)})
	i, _ := newTestInitiator(t, tr, fake, nil)
	if _, err := i.Attach(context.Background(), Target{IQN: testIQN, Portals: []string{portalA, portalB}, LUN: 2, Discovery: true}); err != nil {
		t.Fatal(err)
	}
	fake.Done()
	isDiscovery := func(argv []string) bool { return slices.Contains(argv, "--discover") }
	if !isDiscovery(fake.order[0]) || !isDiscovery(fake.order[1]) || slices.ContainsFunc(fake.order[2:], isDiscovery) {
		t.Errorf("discoveries and record updates interleave:\n%q", fake.order)
	}
}

func TestNewRejectsNegativeSessionTimeouts(t *testing.T) {
	for _, c := range []Config{{ReplacementTimeout: -time.Second}, {PortalLoginTimeout: -time.Second}} {
		if _, err := New(c, hostexec.NewFake(t), nil); !errors.Is(err, sentinel.ErrInvalid) {
			t.Errorf("New(%+v) = %v, want ErrInvalid", c, err)
		}
	}
}
