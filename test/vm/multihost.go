package vm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/blockvol/blockvol/internal/testenv"
)

// The multi-host harness: two agent guests and a target host.
//
// The target host is this machine inside a network namespace the test
// creates (named bvmh-<pid>): a bridge bvmh-br holding the target's
// addresses (TargetIP, and TargetIP2 as a second portal), one tap device
// per guest enslaved to it, tgtd listening on port 3260 there and an sshd
// on TargetIP:22 that lets the guests' blockvol in with a key made for the
// run. qemu runs inside the namespace too, so its taps are found there;
// the guests reach nothing but that namespace. The volumes' files live in
// a directory of the test.
//
// Each guest boots in agent mode (test/vm/guest/agent.go) and then runs
// the commands the test sends over its second serial port; qemu's monitor
// (a unix socket) freezes and resumes it.

const (
	// TargetIP and TargetIP2 are the target host's addresses in the
	// test's namespace; agents get AgentNet.N/24 addresses.
	TargetIP  = "10.213.0.1"
	TargetIP2 = "10.213.0.2"
	agentNet  = "10.213.0."
	bridge    = "bvmh-br"
)

// TargetHost is the test's network namespace with tgtd and sshd.
type TargetHost struct {
	NS         string
	Dir        string // logs, keys
	Pool       string // the volumes' directory
	TGTControl int
	tgtd, sshd *exec.Cmd
	// ClientKey and KnownHosts are what the agents log in with.
	ClientKey, KnownHosts []byte
}

// StartTargetHost creates the namespace and starts tgtd and sshd in it.
// Stop undoes everything.
func StartTargetHost(ctx context.Context, dir string, taps ...string) (*TargetHost, error) {
	h := &TargetHost{NS: fmt.Sprintf("bvmh-%d", os.Getpid()), Dir: dir, Pool: filepath.Join(dir, "pool")}
	// pool/mpath is the agents' "mpath" backend's (guest/paths.go).
	if err := os.MkdirAll(filepath.Join(h.Pool, "mpath"), 0o700); err != nil {
		return nil, err
	}
	if err := h.makeNetwork(ctx, taps); err != nil {
		h.Stop()
		return nil, err
	}
	if err := h.StartTGTD(ctx); err != nil {
		h.Stop()
		return nil, err
	}
	if err := h.startSSHD(ctx); err != nil {
		h.Stop()
		return nil, err
	}
	return h, nil
}

// removeStaleNamespaces deletes the bvmh-<pid> namespaces of test
// processes that are gone (a killed run cannot clean up).
func removeStaleNamespaces(ctx context.Context) {
	out, _ := exec.CommandContext(ctx, "ip", "netns", "list").Output()
	for _, l := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(l), " ")
		pid, err := strconv.Atoi(strings.TrimPrefix(name, "bvmh-"))
		if !strings.HasPrefix(name, "bvmh-") || err != nil {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, os.ErrNotExist) {
			exec.CommandContext(ctx, "ip", "netns", "del", name).Run()
		}
	}
}

func (h *TargetHost) makeNetwork(ctx context.Context, taps []string) error {
	removeStaleNamespaces(ctx)
	cmds := [][]string{
		{"netns", "add", h.NS},
		{"-n", h.NS, "link", "set", "lo", "up"},
		{"-n", h.NS, "link", "add", bridge, "type", "bridge"},
		{"-n", h.NS, "addr", "add", TargetIP + "/24", "dev", bridge},
		{"-n", h.NS, "addr", "add", TargetIP2 + "/24", "dev", bridge},
		{"-n", h.NS, "link", "set", bridge, "up"},
	}
	for _, tap := range taps {
		cmds = append(cmds,
			[]string{"-n", h.NS, "tuntap", "add", "dev", tap, "mode", "tap"},
			[]string{"-n", h.NS, "link", "set", tap, "master", bridge},
			[]string{"-n", h.NS, "link", "set", tap, "up"})
	}
	for _, c := range cmds {
		if out, err := exec.CommandContext(ctx, "ip", c...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(c, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// inNS starts a program in the namespace, in its own process group, its
// output to logPath.
func (h *TargetHost) inNS(logPath string, argv ...string) (*exec.Cmd, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.NS}, argv...)...)
	cmd.Stdout, cmd.Stderr = f, f
	// Dies with the test, even a killed one.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return cmd, nil
}

// tgtControlBusy reports whether a live tgtd holds control port n (tgtd
// keeps a lock on /var/run/tgtd/socket.<n>.lock; F_GETLK only asks).
func tgtControlBusy(n int) bool {
	f, err := os.Open(fmt.Sprintf("/var/run/tgtd/socket.%d.lock", n))
	if err != nil {
		return false
	}
	defer f.Close()
	lk := syscall.Flock_t{Type: syscall.F_WRLCK}
	if err := syscall.FcntlFlock(f.Fd(), syscall.F_GETLK, &lk); err != nil {
		return true
	}
	return lk.Type != syscall.F_UNLCK
}

// StartTGTD starts tgtd in the namespace (all its addresses, port 3260)
// on a free control port in 40..49, the same one again after a restart.
func (h *TargetHost) StartTGTD(ctx context.Context) error {
	if h.TGTControl == 0 {
		for n := 40; n <= 49 && h.TGTControl == 0; n++ {
			if !tgtControlBusy(n) {
				h.TGTControl = n
			}
		}
		if h.TGTControl == 0 {
			return errors.New("no free tgtd control port in 40..49")
		}
	}
	cmd, err := h.inNS(filepath.Join(h.Dir, "tgtd.log"), "tgtd", "-f", "-C", strconv.Itoa(h.TGTControl))
	if err != nil {
		return err
	}
	h.tgtd = cmd
	return poll(ctx, 20*time.Second, "tgtd control port", func() bool {
		return h.Tgtadm(ctx, "--mode", "sys", "--op", "show") == nil
	})
}

// StopTGTD kills tgtd, as a crash of the target host's tgtd would: it
// comes back without targets.
func (h *TargetHost) StopTGTD() {
	if h.tgtd == nil {
		return
	}
	syscall.Kill(-h.tgtd.Process.Pid, syscall.SIGKILL)
	h.tgtd.Wait()
	h.tgtd = nil
	os.Remove(fmt.Sprintf("/var/run/tgtd/socket.%d", h.TGTControl))
	os.Remove(fmt.Sprintf("/var/run/tgtd/socket.%d.lock", h.TGTControl))
}

// Tgtadm runs tgtadm against the namespace's tgtd (its control socket is
// a file: no need to enter the namespace).
func (h *TargetHost) Tgtadm(ctx context.Context, args ...string) error {
	_, err := h.TgtadmOut(ctx, args...)
	return err
}

// TgtadmOut is Tgtadm returning the output.
func (h *TargetHost) TgtadmOut(ctx context.Context, args ...string) (string, error) {
	argv := append([]string{"-C", strconv.Itoa(h.TGTControl), "--lld", "iscsi"}, args...)
	out, err := exec.CommandContext(ctx, "tgtadm", argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("tgtadm %s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Connected returns the initiator names logged in to target iqn.
func (h *TargetHost) Connected(ctx context.Context, iqn string) ([]string, error) {
	out, err := h.TgtadmOut(ctx, "--mode", "target", "--op", "show")
	if err != nil {
		return nil, err
	}
	var in []string
	cur := ""
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "Target ") {
			_, name, _ := strings.Cut(l, ": ")
			cur = strings.TrimSpace(name)
			continue
		}
		if cur == iqn {
			if _, v, ok := strings.Cut(strings.TrimSpace(l), "Initiator: "); ok {
				name, _, _ := strings.Cut(v, " ")
				in = append(in, name)
			}
		}
	}
	return in, nil
}

func (h *TargetHost) startSSHD(ctx context.Context) error {
	hostKey := filepath.Join(h.Dir, "host_ed25519")
	clientKey := filepath.Join(h.Dir, "client_ed25519")
	for _, k := range []string{hostKey, clientKey} {
		if out, err := exec.CommandContext(ctx, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bvmh", "-f", k).CombinedOutput(); err != nil {
			return fmt.Errorf("ssh-keygen: %w: %s", err, out)
		}
	}
	var err error
	if h.ClientKey, err = os.ReadFile(clientKey); err != nil {
		return err
	}
	pub, err := os.ReadFile(clientKey + ".pub")
	if err != nil {
		return err
	}
	authorized := filepath.Join(h.Dir, "authorized_keys")
	if err := os.WriteFile(authorized, pub, 0o600); err != nil {
		return err
	}
	hostPub, err := os.ReadFile(hostKey + ".pub")
	if err != nil {
		return err
	}
	f := strings.Fields(string(hostPub))
	h.KnownHosts = []byte(fmt.Sprintf("%s %s %s\n", TargetIP, f[0], f[1]))
	pidFile := filepath.Join(h.Dir, "sshd.pid")
	cfg := strings.Join([]string{
		"Port 22", "ListenAddress " + TargetIP,
		"HostKey " + hostKey, "PidFile " + pidFile, "AuthorizedKeysFile " + authorized,
		"PermitRootLogin prohibit-password", "PubkeyAuthentication yes", "PasswordAuthentication no",
		"KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "MaxStartups 100",
		"MaxSessions 100", "LogLevel INFO", "",
	}, "\n")
	cfgPath := filepath.Join(h.Dir, "sshd_config")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return err
	}
	argv, err := testenv.QuietShell(filepath.Join(h.Dir, "empty-bashrc"), "/usr/sbin/sshd", "-D", "-e", "-f", cfgPath)
	if err != nil {
		return err
	}
	if h.sshd, err = h.inNS(filepath.Join(h.Dir, "sshd.log"), argv...); err != nil {
		return err
	}
	return poll(ctx, 10*time.Second, "sshd pid file", func() bool {
		_, err := os.Stat(pidFile)
		return err == nil
	})
}

// Stop kills sshd and tgtd and deletes the namespace (and its devices).
func (h *TargetHost) Stop() {
	h.StopTGTD()
	if h.sshd != nil {
		syscall.Kill(-h.sshd.Process.Pid, syscall.SIGKILL)
		h.sshd.Wait()
		h.sshd = nil
	}
	exec.Command("ip", "netns", "del", h.NS).Run()
}

// poll checks cond every 50 ms until it holds or timeout ends.
func poll(ctx context.Context, timeout time.Duration, what string, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: not within %s", what, timeout)
		case <-tick.C:
		}
	}
	return nil
}

// Agent is one booted agent guest.
type Agent struct {
	Name, IP  string
	Initiator string
	ctlPath   string
	monPath   string
	cancel    context.CancelFunc
	ready     chan struct{}
	exited    chan struct{}
	res       *Result
	bootErr   error

	mu      sync.Mutex
	ctl     net.Conn
	next    int
	waiting map[int]chan controlAnswer
}

// controlAnswer is the guest's answer to one command (agent.go).
type controlAnswer struct {
	ID   int     `json:"id"`
	RC   int     `json:"rc"`
	Out  string  `json:"out"`
	Secs float64 `json:"secs"`
}

// AgentConfig is what BootAgent needs.
type AgentConfig struct {
	QEMU    string
	Kernel  Kernel
	Initrd  string
	Host    *TargetHost
	Name    string // host name, also the initiator's suffix
	N       int    // address TargetNet.N, MAC ..:N
	Tap     string
	Dir     string // sockets
	LogPath string
}

// BootAgent starts an agent guest; Ready waits for it.
func BootAgent(cfg AgentConfig) *Agent {
	a := &Agent{
		Name: cfg.Name, IP: fmt.Sprintf("%s%d", agentNet, cfg.N),
		Initiator: "iqn.2024-01.test.vm:" + cfg.Name,
		ctlPath:   filepath.Join(cfg.Dir, cfg.Name+".ctl"),
		monPath:   filepath.Join(cfg.Dir, cfg.Name+".mon"),
		ready:     make(chan struct{}), exited: make(chan struct{}),
		waiting: map[int]chan controlAnswer{},
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	var once sync.Once
	bc := BootConfig{
		QEMU: cfg.QEMU, Kernel: cfg.Kernel, Initrd: cfg.Initrd, CPUs: 1, MemoryMB: 768,
		LogPath: cfg.LogPath, Netns: cfg.Host.NS,
		Append: []string{"vmtest.mode=agent", "vmtest.name=" + cfg.Name, "vmtest.ip=" + a.IP + "/24",
			"vmtest.target=" + TargetIP, "vmtest.tgtctl=" + strconv.Itoa(cfg.Host.TGTControl), "vmtest.pool=" + cfg.Host.Pool, "vmtest.target2=" + TargetIP2},
		Extra: []string{
			"-netdev", "tap,id=n0,ifname=" + cfg.Tap + ",script=no,downscript=no",
			"-device", fmt.Sprintf("virtio-net-pci,netdev=n0,mac=52:54:00:21:30:%02x", cfg.N),
			"-chardev", "socket,id=ctl,path=" + a.ctlPath + ",server=on,wait=off",
			"-serial", "chardev:ctl",
			"-monitor", "unix:" + a.monPath + ",server=on,wait=off",
		},
		OnEvent: func(ev Event) {
			if ev.Kind == "READY" {
				once.Do(func() { close(a.ready) })
			}
		},
	}
	go func() {
		defer close(a.exited)
		a.res, a.bootErr = Boot(ctx, bc)
	}()
	return a
}

// Ready waits until the guest serves its control port, and connects.
func (a *Agent) Ready(ctx context.Context) error {
	select {
	case <-a.ready:
	case <-a.exited:
		return fmt.Errorf("agent %s stopped before it was ready (%v): %s", a.Name, a.bootErr, a.consoleTail(30))
	case <-ctx.Done():
		return fmt.Errorf("agent %s not ready: %w: %s", a.Name, ctx.Err(), a.consoleTail(30))
	}
	c, err := net.Dial("unix", a.ctlPath)
	if err != nil {
		return err
	}
	a.ctl = c
	go a.readAnswers(c)
	return nil
}

func (a *Agent) consoleTail(n int) string {
	if a.res == nil {
		return "(console: see the log)"
	}
	c := a.res.Console
	return strings.Join(c[max(0, len(c)-n):], "\n")
}

func (a *Agent) readAnswers(c net.Conn) {
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 64*1024), 8*1024*1024)
	for sc.Scan() {
		var ans controlAnswer
		if json.Unmarshal(sc.Bytes(), &ans) != nil {
			continue
		}
		a.mu.Lock()
		ch := a.waiting[ans.ID]
		delete(a.waiting, ans.ID)
		a.mu.Unlock()
		if ch != nil {
			ch <- ans
		}
	}
	a.mu.Lock()
	for id, ch := range a.waiting {
		close(ch)
		delete(a.waiting, id)
	}
	a.mu.Unlock()
}

// Run runs argv in the guest and returns its combined output and exit
// status (-1: could not run, or timed out). err is set only when the
// guest did not answer.
func (a *Agent) Run(ctx context.Context, timeout time.Duration, argv ...string) (string, int, error) {
	a.mu.Lock()
	a.next++
	id := a.next
	ch := make(chan controlAnswer, 1)
	a.waiting[id] = ch
	b, _ := json.Marshal(map[string]any{"id": id, "argv": argv, "timeout": timeout.Seconds()})
	_, err := a.ctl.Write(append(b, '\n'))
	a.mu.Unlock()
	if err != nil {
		return "", -1, fmt.Errorf("agent %s: send %v: %w", a.Name, argv, err)
	}
	select {
	case ans, ok := <-ch:
		if !ok {
			return "", -1, fmt.Errorf("agent %s: control port closed during %v", a.Name, argv)
		}
		return ans.Out, ans.RC, nil
	case <-ctx.Done():
		a.mu.Lock()
		delete(a.waiting, id)
		a.mu.Unlock()
		return "", -1, fmt.Errorf("agent %s: no answer to %v: %w", a.Name, argv, ctx.Err())
	}
}

// Monitor sends one command to qemu's monitor ("stop", "cont") and
// returns its output.
func (a *Agent) Monitor(cmd string) (string, error) {
	c, err := net.DialTimeout("unix", a.monPath, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	readPrompt := func() (string, error) {
		var b strings.Builder
		for !strings.HasSuffix(b.String(), "(qemu) ") {
			ch, err := r.ReadByte()
			if err != nil {
				return b.String(), err
			}
			b.WriteByte(ch)
		}
		return b.String(), nil
	}
	if _, err := readPrompt(); err != nil {
		return "", fmt.Errorf("monitor of %s: %w", a.Name, err)
	}
	if _, err := c.Write([]byte(cmd + "\n")); err != nil {
		return "", err
	}
	out, err := readPrompt()
	return out, err
}

// Shutdown kills the guest and waits for qemu to end.
func (a *Agent) Shutdown() *Result {
	a.cancel()
	<-a.exited
	if a.ctl != nil {
		a.ctl.Close()
	}
	return a.res
}
