// Package testsrv starts the servers the iscsitarget tests talk to — a
// private tgtd and a private sshd, both on 127.0.0.1 — and stops them
// (by PID) when the test ends. It is for tests only.
//
// tgtd gets a control port in 10..19 and a portal port in 3261..3269, never
// tgtd's defaults (control port 0, portal 3260), which another test stack
// on the same machine may use. sshd gets its own host key, configuration,
// authorized_keys and a free port; the system's sshd is never touched.
// Servers log to files in the test's temporary directory, never to the
// test's output.
package testsrv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blockvol/blockvol/internal/testenv"
)

// TGTD is a running tgtd.
type TGTD struct {
	t *testing.T
	// ControlPort is tgtadm's -C; Portal is "127.0.0.1:P".
	ControlPort int
	Portal      string
	Log         string
	cmd         *exec.Cmd
	cmdExited   chan error
}

// StartTGTD starts a tgtd for t, skipping t when tgtd is missing or the
// test does not run as root, and in -short mode.
func StartTGTD(t *testing.T) *TGTD {
	t.Helper()
	testenv.RequireLong(t, "tgtd")
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "tgtd", "tgtadm")
	d := &TGTD{t: t, Log: filepath.Join(t.TempDir(), "tgtd.log")}
	var lastErr error
	for cp := 10; cp <= 19; cp++ {
		if controlPortBusy(cp) {
			continue
		}
		for pp := 3261; pp <= 3269; pp++ {
			if !tcpFree(pp) {
				continue
			}
			d.ControlPort, d.Portal = cp, net.JoinHostPort("127.0.0.1", strconv.Itoa(pp))
			if lastErr = d.start(); lastErr == nil {
				t.Cleanup(d.Stop)
				return d
			}
		}
	}
	t.Fatalf("could not start tgtd on a control port in 10..19 and a portal in 127.0.0.1:3261..3269: %v", lastErr)
	return nil
}

// controlPortBusy reports whether a live tgtd holds control port n: tgtd
// keeps a lockf(3) lock on /var/run/tgtd/socket.<n>.lock. F_GETLK only
// asks; it takes nothing.
func controlPortBusy(n int) bool {
	f, err := os.Open(fmt.Sprintf("/var/run/tgtd/socket.%d.lock", n))
	if err != nil {
		return false
	}
	defer f.Close()
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: 0, Start: 0, Len: 1}
	if err := syscall.FcntlFlock(f.Fd(), syscall.F_GETLK, &lk); err != nil {
		return true
	}
	return lk.Type != syscall.F_UNLCK
}

func tcpFree(port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func (d *TGTD) start() error {
	logf, err := os.OpenFile(d.Log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command("tgtd", "-f", "--control-port", strconv.Itoa(d.ControlPort), "--iscsi", "portal="+d.Portal)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		up := exec.Command("tgtadm", "-C", strconv.Itoa(d.ControlPort), "--mode", "sys", "--op", "show").Run() == nil
		if up {
			if c, err := net.DialTimeout("tcp", d.Portal, time.Second); err == nil {
				c.Close()
				d.cmd = cmd
				d.cmdExited = exited
				return nil
			}
		}
		select {
		case err := <-exited:
			log, _ := os.ReadFile(d.Log)
			return fmt.Errorf("tgtd exited (%v): %s", err, lastLines(string(log), 5))
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("tgtd on control port %d, portal %s did not come up in 10s", d.ControlPort, d.Portal)
		case <-tick.C:
		}
	}
}

// Stop kills tgtd (SIGKILL: tgtd ignores SIGTERM while it has targets)
// and removes its control socket.
func (d *TGTD) Stop() {
	if d.cmd == nil {
		return
	}
	_ = d.cmd.Process.Kill()
	<-d.cmdExited
	d.cmd = nil
	os.Remove(fmt.Sprintf("/var/run/tgtd/socket.%d", d.ControlPort))
	os.Remove(fmt.Sprintf("/var/run/tgtd/socket.%d.lock", d.ControlPort))
}

// Restart kills tgtd, as a crash or a reboot of the target host would,
// and starts it again on the same ports: it comes back without targets.
func (d *TGTD) Restart() {
	d.t.Helper()
	d.Stop()
	if err := d.start(); err != nil {
		d.t.Fatalf("restart tgtd: %v", err)
	}
}

// Tgtadm runs tgtadm against this tgtd and returns its output.
func (d *TGTD) Tgtadm(args ...string) (string, error) {
	out, err := exec.Command("tgtadm", append([]string{"-C", strconv.Itoa(d.ControlPort), "--lld", "iscsi"}, args...)...).CombinedOutput()
	return string(out), err
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// SSHD is a running sshd on 127.0.0.1 that lets root in with ClientKey.
type SSHD struct {
	t    *testing.T
	dir  string
	Addr string // 127.0.0.1:port
	// ClientKey is the private key root logs in with; KnownHosts holds
	// the server's host key for Addr.
	ClientKey  string
	KnownHosts string
	// HostPub is the server's public host key line.
	HostPub string
	Log     string
	cmd     *exec.Cmd
	exited  chan error
	config  string
}

// StartSSHD starts an sshd for t, skipping t when sshd or ssh-keygen is
// missing, the test does not run as root, and in -short mode.
func StartSSHD(t *testing.T) *SSHD {
	t.Helper()
	testenv.RequireLong(t, "sshd")
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "ssh-keygen")
	if _, err := os.Stat("/usr/sbin/sshd"); err != nil {
		testenv.Skip(t, "sshd (openssh-server) not installed")
	}
	dir := t.TempDir()
	s := &SSHD{t: t, dir: dir, Log: filepath.Join(dir, "sshd.log")}
	hostKey := filepath.Join(dir, "host_ed25519")
	s.ClientKey = filepath.Join(dir, "client_ed25519")
	for _, k := range []string{hostKey, s.ClientKey} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "blockvol-test", "-f", k).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v: %s", err, out)
		}
	}
	clientPub, err := os.ReadFile(s.ClientKey + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	authorized := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(authorized, clientPub, 0o600); err != nil {
		t.Fatal(err)
	}
	hostPub, err := os.ReadFile(hostKey + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	s.HostPub = strings.TrimSpace(string(hostPub))
	// sshd's privilege separation directory.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	var lastErr error
	for range 5 {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		s.KnownHosts = filepath.Join(dir, "known_hosts")
		key := strings.Fields(s.HostPub)
		if err := os.WriteFile(s.KnownHosts, []byte(fmt.Sprintf("[127.0.0.1]:%d %s %s\n", port, key[0], key[1])), 0o600); err != nil {
			t.Fatal(err)
		}
		s.config = filepath.Join(dir, "sshd_config")
		cfg := strings.Join([]string{
			"Port " + strconv.Itoa(port),
			"ListenAddress 127.0.0.1",
			"HostKey " + hostKey,
			"PidFile " + filepath.Join(dir, "sshd.pid"),
			"AuthorizedKeysFile " + authorized,
			"PermitRootLogin prohibit-password",
			"PubkeyAuthentication yes",
			"PasswordAuthentication no",
			"KbdInteractiveAuthentication no",
			"UsePAM no",
			"StrictModes no",
			"LogLevel VERBOSE",
			"",
		}, "\n")
		if err := os.WriteFile(s.config, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		if lastErr = s.start(); lastErr == nil {
			t.Cleanup(s.Stop)
			return s
		}
	}
	t.Fatalf("could not start sshd: %v", lastErr)
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *SSHD) start() error {
	argv, err := testenv.QuietShell(filepath.Join(s.dir, "empty-bashrc"), "/usr/sbin/sshd", "-D", "-f", s.config, "-E", s.Log)
	if err != nil {
		return err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if banner(s.Addr) {
			s.cmd, s.exited = cmd, exited
			return nil
		}
		select {
		case err := <-exited:
			log, _ := os.ReadFile(s.Log)
			return fmt.Errorf("sshd exited (%v): %s", err, lastLines(string(log), 5))
		case <-time.After(20 * time.Millisecond):
		}
	}
	_ = cmd.Process.Kill()
	<-exited
	return errors.New("sshd did not answer within 10s")
}

// banner reports whether an SSH server answers at addr.
func banner(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "SSH-")
}

// Stop kills sshd and, with it, the sessions it serves.
func (s *SSHD) Stop() {
	if s.cmd == nil {
		return
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.exited
	}
	s.cmd = nil
}

// Restart stops sshd and starts it again on the same port, with the same
// keys: established connections are cut.
func (s *SSHD) Restart() {
	s.t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		s.t.Fatalf("restart sshd: %v", err)
	}
}

// Freeze stops (SIGSTOP) sshd and every process under it, as a host that
// died or was cut off: connections stay open, nothing answers on them.
// thaw resumes them.
func (s *SSHD) Freeze() (thaw func()) {
	pids := descendants(s.cmd.Process.Pid)
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGSTOP)
	}
	return func() {
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGCONT)
		}
	}
}

// descendants returns pid and every process under it (from /proc).
func descendants(pid int) []int {
	parent := map[int]int{}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, st := range stats {
		b, err := os.ReadFile(st)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		rest := string(b[strings.LastIndexByte(string(b), ')')+1:])
		f := strings.Fields(rest)
		p, _ := strconv.Atoi(filepath.Base(filepath.Dir(st)))
		if len(f) > 1 {
			parent[p], _ = strconv.Atoi(f[1])
		}
	}
	out := []int{pid}
	for k := 0; k < len(out); k++ {
		for p, pp := range parent {
			if pp == out[k] {
				out = append(out, p)
			}
		}
	}
	return out
}
