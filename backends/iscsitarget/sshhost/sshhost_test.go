package sshhost_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/blockvol/blockvol/backends/iscsitarget/internal/testsrv"
	"github.com/blockvol/blockvol/backends/iscsitarget/sshhost"
	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/internal/testenv"
)

// hostile are arguments a shell would love to interpret.
var hostile = []string{
	"",
	" ",
	"plain",
	"two words",
	"it's",
	`"double"`,
	`back\slash\`,
	"$HOME",
	"${PATH}",
	"$(touch /tmp/blockvol-pwned)",
	"`touch /tmp/blockvol-pwned`",
	"; touch /tmp/blockvol-pwned",
	"&& touch /tmp/blockvol-pwned ||",
	"| cat /etc/shadow",
	"> /tmp/blockvol-pwned",
	"line1\nline2",
	"tab\there",
	"*",
	"~",
	"~root",
	"!!",
	"#comment",
	"-n",
	"--",
	"a=b",
	"{a,b}",
	"'",
	"''",
	"'\"'\"'",
	"\x01\x7f",
	"ünïcödé ✓",
	"%s %d %n",
}

func TestCommandQuotesForPOSIXShells(t *testing.T) {
	cmd, err := sshhost.Command("printf", append([]string{`%s\0`}, hostile...)...)
	if err != nil {
		t.Fatal(err)
	}
	for _, sh := range []string{"sh", "dash", "bash"} {
		if _, err := exec.LookPath(sh); err != nil {
			continue
		}
		out, err := exec.Command(sh, "-c", cmd).Output()
		if err != nil {
			t.Fatalf("%s -c %q: %v", sh, cmd, err)
		}
		if got := splitNUL(out); !reflect.DeepEqual(got, hostile) {
			t.Errorf("%s read back\n %q\nwant\n %q", sh, got, hostile)
		}
	}
	if _, err := os.Stat("/tmp/blockvol-pwned"); err == nil {
		t.Fatal("a hostile argument ran a command")
	}
}

func TestCommandRefusesNUL(t *testing.T) {
	if _, err := sshhost.Command("echo", "a\x00b"); err == nil || !strings.Contains(err.Error(), "NUL") {
		t.Fatalf("Command with a NUL = %v", err)
	}
}

func TestQuoteLeavesPlainWordsAlone(t *testing.T) {
	for in, want := range map[string]string{
		"tgtadm":                        "tgtadm",
		"--initiator-name":              "--initiator-name",
		"iqn.1993-08.org.debian:01:abc": "iqn.1993-08.org.debian:01:abc",
		"/srv/pool/v1.img":              "/srv/pool/v1.img",
		"a b":                           "'a b'",
		"it's":                          `'it'"'"'s'`,
		"":                              "''",
	} {
		if got := sshhost.Quote(in); got != want {
			t.Errorf("Quote(%q) = %s, want %s", in, got, want)
		}
	}
}

func splitNUL(b []byte) []string {
	parts := strings.Split(string(b), "\x00")
	return parts[:len(parts)-1]
}

func newHost(t *testing.T, s *testsrv.SSHD) *sshhost.Host {
	t.Helper()
	h, err := sshhost.New(sshhost.Config{Addr: s.Addr, User: "root", KeyFile: s.ClientKey, KnownHostsFile: s.KnownHosts})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func TestRunOverSSHPassesArgumentsVerbatim(t *testing.T) {
	s := testsrv.StartSSHD(t)
	h := newHost(t, s)
	out, err := h.Run(context.Background(), "printf", append([]string{`%s\0`}, hostile...)...)
	if err != nil {
		t.Fatal(err)
	}
	if got := splitNUL(out); !reflect.DeepEqual(got, hostile) {
		t.Fatalf("the remote program received\n %q\nwant\n %q", got, hostile)
	}
	if _, err := os.Stat("/tmp/blockvol-pwned"); err == nil {
		t.Fatal("a hostile argument ran a command on the remote host")
	}
	// A hostile program name is one word too.
	_, err = h.Run(context.Background(), "no such; touch /tmp/blockvol-pwned")
	if hostexec.ExitCode(err) != 127 {
		t.Fatalf("hostile program name: %v", err)
	}
	if _, err := os.Stat("/tmp/blockvol-pwned"); err == nil {
		t.Fatal("a hostile program name ran a command on the remote host")
	}
}

func TestRunReportsExitStatusAndStderr(t *testing.T) {
	s := testsrv.StartSSHD(t)
	h := newHost(t, s)
	out, err := h.Run(context.Background(), "sh", "-c", "echo out; echo oops >&2; exit 3")
	var ee *hostexec.ExitError
	if !errors.As(err, &ee) || ee.Code != 3 || strings.TrimSpace(ee.Stderr) != "oops" || string(out) != "out\n" {
		t.Fatalf("Run = %q, %#v", out, err)
	}
	if ee.Argv[0] != "sh" || ee.Argv[2] != "echo out; echo oops >&2; exit 3" {
		t.Fatalf("argv %q", ee.Argv)
	}
}

func TestRunEndsWithItsContext(t *testing.T) {
	s := testsrv.StartSSHD(t)
	h := newHost(t, s)
	marker := fmt.Sprintf("%d.25", 1000+os.Getpid()%1000) // a unique sleep
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := h.Run(ctx, "sleep", marker)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("Run = %v after %s", err, time.Since(start))
	}
	// The remote program was killed (SIGKILL through the session).
	waitGone(t, "sleep "+marker)
	// The connection still serves.
	if _, err := h.Run(context.Background(), "true"); err != nil {
		t.Fatal(err)
	}
}

func waitGone(t *testing.T, pattern string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _ := exec.Command("pgrep", "-f", "^"+pattern+"$").Output()
		if len(bytes.TrimSpace(out)) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %q still runs (pid %s)", pattern, bytes.TrimSpace(out))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestHoldKeepsALockUntilReleasedOrDisconnected(t *testing.T) {
	s := testsrv.StartSSHD(t)
	testenv.RequireTools(t, "flock")
	lock := filepath.Join(t.TempDir(), "lock")
	holder := []string{"-w", "0.3", "-E", "75", "--", lock, "sh", "-c", "echo locked; exec cat >/dev/null"}
	h1, h2 := newHost(t, s), newHost(t, s)
	ctx := context.Background()

	line, release, err := h1.Hold(ctx, "flock", holder...)
	if err != nil || line != "locked" {
		t.Fatalf("Hold = %q, %v", line, err)
	}
	if _, _, err := h2.Hold(ctx, "flock", holder...); hostexec.ExitCode(err) != 75 {
		t.Fatalf("second Hold while the lock is held = %v; want exit 75", err)
	}
	if err := release(); err != nil {
		t.Fatalf("release: %v", err)
	}
	line, _, err = h2.Hold(ctx, "flock", holder...)
	if err != nil || line != "locked" {
		t.Fatalf("Hold after release = %q, %v", line, err)
	}
	// h2 never releases: it goes away, as a crashed agent would, and the
	// lock goes with its connection.
	h2.Close()
	if out, err := exec.Command("flock", "-w", "5", lock, "true").CombinedOutput(); err != nil {
		t.Fatalf("lock not released when its holder's connection closed: %v %s", err, out)
	}
}

func TestHostKeyIsChecked(t *testing.T) {
	s := testsrv.StartSSHD(t)
	dir := t.TempDir()
	other := filepath.Join(dir, "other")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v %s", err, out)
	}
	pub, _ := os.ReadFile(other + ".pub")
	f := strings.Fields(string(pub))
	_, port, _ := strings.Cut(s.Addr, ":")

	t.Run("mismatch", func(t *testing.T) {
		kh := filepath.Join(dir, "known_hosts_wrong")
		os.WriteFile(kh, []byte(fmt.Sprintf("[127.0.0.1]:%s %s %s\n", port, f[0], f[1])), 0o600)
		h, err := sshhost.New(sshhost.Config{Addr: s.Addr, User: "root", KeyFile: s.ClientKey, KnownHostsFile: kh})
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		_, err = h.Run(context.Background(), "touch", "/tmp/blockvol-should-not-run")
		if err == nil || !strings.Contains(err.Error(), "host key mismatch: the server presented ssh-ed25519 SHA256:") ||
			!strings.Contains(err.Error(), "refusing to connect") || !strings.Contains(err.Error(), kh+" holds another key for it (line 1)") {
			t.Fatalf("Run with a wrong host key = %v", err)
		}
		if _, err := os.Stat("/tmp/blockvol-should-not-run"); err == nil {
			os.Remove("/tmp/blockvol-should-not-run")
			t.Fatal("the command ran despite the wrong host key")
		}
	})
	t.Run("unknown", func(t *testing.T) {
		kh := filepath.Join(dir, "known_hosts_other_host")
		os.WriteFile(kh, []byte(fmt.Sprintf("[127.0.0.2]:%s %s\n", port, s.HostPub)), 0o600)
		_, err := sshhost.New(sshhost.Config{Addr: s.Addr, User: "root", KeyFile: s.ClientKey, KnownHostsFile: kh})
		if err == nil || !strings.Contains(err.Error(), "has no host key for [127.0.0.1]:"+port) {
			t.Fatalf("New without a host key = %v", err)
		}
	})
	t.Run("client key refused", func(t *testing.T) {
		h, err := sshhost.New(sshhost.Config{Addr: s.Addr, User: "root", KeyFile: other, KnownHostsFile: s.KnownHosts})
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if _, err := h.Run(context.Background(), "true"); err == nil || !strings.Contains(err.Error(), "the server refused key "+other) {
			t.Fatalf("Run with an unknown client key = %v", err)
		}
	})
}

func TestPassphraseKeyIsRefusedClearly(t *testing.T) {
	testenv.RequireTools(t, "ssh-keygen")
	key := filepath.Join(t.TempDir(), "k")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "pass phrase", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v %s", err, out)
	}
	_, err := sshhost.New(sshhost.Config{Addr: "127.0.0.1:22", User: "root", KeyFile: key, KnownHostsFile: "/dev/null"})
	if err == nil || !strings.Contains(err.Error(), "protected by a passphrase") {
		t.Fatalf("New = %v", err)
	}
}

func TestReconnectsAfterTheServerRestarts(t *testing.T) {
	s := testsrv.StartSSHD(t)
	h := newHost(t, s)
	if _, err := h.Run(context.Background(), "true"); err != nil {
		t.Fatal(err)
	}
	s.Restart()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := h.Run(ctx, "echo", "again"); err != nil || string(out) != "again\n" {
		t.Fatalf("Run after sshd restart = %q, %v", out, err)
	}
}

// TestHostThatStopsAnsweringCostsDialTimeout: a host that stops answering
// on an open connection (it died, or the network to it was cut) fails a
// call after DialTimeout, not at the end of the call's deadline; once it
// answers again, the next call reconnects.
func TestHostThatStopsAnsweringCostsDialTimeout(t *testing.T) {
	s := testsrv.StartSSHD(t)
	h, err := sshhost.New(sshhost.Config{Addr: s.Addr, User: "root", KeyFile: s.ClientKey, KnownHostsFile: s.KnownHosts, DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	if _, err := h.Run(context.Background(), "true"); err != nil {
		t.Fatal(err)
	}
	thaw := s.Freeze()
	t.Cleanup(thaw)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := h.Run(ctx, "true")
		errc <- err
	}()
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "did not answer") {
			t.Fatalf("Run on a host that stopped answering = %v, want a \"did not answer\" error", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run on a host that stopped answering still waits after 20s (DialTimeout 1s)")
	}
	thaw()
	if out, err := h.Run(ctx, "echo", "again"); err != nil || string(out) != "again\n" {
		t.Fatalf("Run once the host answers again = %q, %v", out, err)
	}
}
