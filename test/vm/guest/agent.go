package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Agent mode (vmtest.mode=agent) turns the guest into one agent of the
// multi-host tests (test/vm/multihost.go): a host with its own host name,
// initiator name, iscsid and blockvol, on a network device the host test
// made. It sets the guest up, starts `blockvol serve` with the iscsitarget
// backend pointed at the host test's target (over SSH), says
// "VMTEST READY <name>" on the console and then runs the commands the host
// test sends over the second serial port until it powers off.
//
// Kernel parameters read, besides vmtest.mode:
//
//	vmtest.name=NAME        host name; the initiator is iqn.2024-01.test.vm:NAME
//	vmtest.ip=A.B.C.D/N     address of eth0
//	vmtest.target=A.B.C.D   the target host (SSH on 22, portal on 3260)
//	vmtest.tgtctl=N         tgtd's control port on the target host
//	vmtest.pool=DIR         the volumes' directory on the target host
//	vmtest.cinder=A.B.C.D   also a backend "cinder" (cinderhost.go)
//
// The control protocol: one JSON request a line, {"id":N,"argv":[...],
// "timeout":SECONDS}; one JSON answer a line, {"id":N,"rc":RC,"out":OUT,
// "secs":SECONDS}, in the order the commands end. Requests run
// concurrently. rc -1 means the program could not run or timed out.

const (
	controlTTY   = "/dev/ttyS1"
	agentSocket  = "/run/blockvol.sock"
	agentConfig  = "/etc/blockvol/config.toml"
	agentSSHDir  = "/etc/vmtest/ssh"
	agentBackend = "target"
)

// agentParams are the agent's kernel parameters.
type agentParams struct {
	name, ip, target, tgtctl, pool string
	cinder                         string // vmtest.cinder (cinderhost.go)
	target2                        string // vmtest.target2 (paths.go)
}

func readAgentParams() agentParams {
	var p agentParams
	b, _ := os.ReadFile("/proc/cmdline")
	for _, f := range strings.Fields(string(b)) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "vmtest.name":
			p.name = v
		case "vmtest.ip":
			p.ip = v
		case "vmtest.target":
			p.target = v
		case "vmtest.tgtctl":
			p.tgtctl = v
		case "vmtest.pool":
			p.pool = v
		case "vmtest.cinder":
			p.cinder = v
		case "vmtest.target2":
			p.target2 = v
		}
	}
	return p
}

// agentConfigTOML is the agent's blockvol configuration.
func agentConfigTOML(p agentParams) string {
	return fmt.Sprintf(`name = "blockvol"
socket = %q
state_dir = "/var/lib/blockvol"
log_level = "debug"
default_backend = %q

[defaults]
size = "512M"
fstype = "ext4"

[iscsi]
host_uuid = "00000000-0000-4000-8000-%012x"

[backends.%s]
type = "iscsitarget"
host = "ssh://root@%s:22"
ssh_key = %q
known_hosts = %q
tgt_control_port = %s
portal = "%s:3260"
iqn_prefix = "iqn.2024-01.test.bvmh"

[backends.%s.pools]
default = %q
`, agentSocket, agentBackend, hostNumber(p.name), agentBackend, p.target, agentSSHDir+"/id", agentSSHDir+"/known_hosts",
		p.tgtctl, p.target, agentBackend, p.pool) + agentCinderTOML(p) + agentPathsTOML(p)
}

// hostNumber makes each agent's HostUUID differ.
func hostNumber(name string) uint64 {
	var n uint64
	for _, c := range name {
		n = n*131 + uint64(c)
	}
	return n & 0xffffffffffff
}

// runAgent sets the agent up and serves the control port; it returns only
// when the setup failed.
func runAgent(r *reporter) int {
	p := readAgentParams()
	if p.name == "" || p.ip == "" || p.target == "" || p.tgtctl == "" || p.pool == "" {
		r.line("FAIL setup 0s agent mode needs vmtest.name, vmtest.ip, vmtest.target, vmtest.tgtctl and vmtest.pool")
		return 1
	}
	r.line("PLAN setup")
	r.runScenario(context.Background(), scenario{name: "setup", timeout: 3 * time.Minute, run: func(s *S) error { return setupAgent(s, p) }})
	if r.fail > 0 {
		return 1
	}
	if err := serveControl(func() { r.line("READY %s", p.name) }); err != nil {
		r.line("FAIL control 0s %v", err)
		return 1
	}
	return 0
}

// setupAgent: base system, initiator name, iscsid, eth0, blockvol.
func setupAgent(s *S, p agentParams) error {
	s.OnFailure(func() { s.r.detail("blockvol log (last 40 lines)", tail("/run/vmtest/blockvol.log", 40)) })
	if err := setupBase(s, p.name); err != nil {
		return err
	}
	if err := s.Step("initiator name iqn.2024-01.test.vm:"+p.name, func() error {
		return os.WriteFile("/etc/iscsi/initiatorname.iscsi", []byte("InitiatorName=iqn.2024-01.test.vm:"+p.name+"\n"), 0o600)
	}); err != nil {
		return err
	}
	if err := startIscsid(s); err != nil {
		return err
	}
	if err := s.Step("eth0 "+p.ip, func() error {
		if _, err := run(s.ctx, "ip", "link", "set", "eth0", "up"); err != nil {
			return err
		}
		_, err := run(s.ctx, "ip", "addr", "add", p.ip, "dev", "eth0")
		return err
	}); err != nil {
		return err
	}
	return s.Step("blockvol serve (iscsitarget on "+p.target+")", func() error {
		if err := os.MkdirAll(filepath.Dir(agentConfig), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(agentConfig, []byte(agentConfigTOML(p)), 0o600); err != nil {
			return err
		}
		return startAgentServe(s.ctx)
	})
}

// agentServePID holds the pid of the agent's `blockvol serve`.
const agentServePID = "/run/vmtest/blockvol.pid"

// startAgentServe starts `blockvol serve` with the agent's configuration
// and waits for its socket.
func startAgentServe(ctx context.Context) error {
	f, err := os.OpenFile("/run/vmtest/blockvol.log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := exec.Command("/usr/bin/blockvol", "serve", "--config", agentConfig)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin"}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		return err
	}
	go cmd.Wait()
	if err := os.WriteFile(agentServePID, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		return err
	}
	return waitFor(ctx, 30*time.Second, 50*time.Millisecond, "blockvol socket", func() (bool, error) {
		_, err := os.Stat(agentSocket)
		return err == nil, nil
	})
}

// controlRequest and controlAnswer are the control protocol's lines.
type controlRequest struct {
	ID      int      `json:"id"`
	Argv    []string `json:"argv"`
	Timeout float64  `json:"timeout"`
}

type controlAnswer struct {
	ID   int     `json:"id"`
	RC   int     `json:"rc"`
	Out  string  `json:"out"`
	Secs float64 `json:"secs"`
}

// serveControl runs the host test's commands until the control port ends.
// ready is called once the port is open and raw: bytes that arrive before
// are lost, so the host writes nothing before it sees READY.
func serveControl(ready func()) error {
	if _, err := run(context.Background(), "stty", "-F", controlTTY, "raw", "-echo", "-echoe", "-echok", "-echoctl", "-icrnl", "-onlcr", "115200"); err != nil {
		return err
	}
	f, err := os.OpenFile(controlTTY, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	ready()
	var mu sync.Mutex
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		var req controlRequest
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil || len(req.Argv) == 0 {
			continue // line noise before the host connected
		}
		go func() {
			ans := runControl(req)
			b, _ := json.Marshal(ans)
			mu.Lock()
			defer mu.Unlock()
			f.Write(append(b, '\n'))
		}()
	}
	return sc.Err()
}

func runControl(req controlRequest) controlAnswer {
	timeout := time.Duration(req.Timeout * float64(time.Second))
	if timeout <= 0 {
		timeout = 5 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	t0 := time.Now()
	cmd := exec.CommandContext(ctx, req.Argv[0], req.Argv[1:]...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin"}
	out, err := cmd.CombinedOutput()
	ans := controlAnswer{ID: req.ID, Out: string(out), Secs: time.Since(t0).Seconds()}
	switch {
	case err == nil:
	case exitCode(err) >= 0 && ctx.Err() == nil:
		ans.RC = exitCode(err)
	default:
		ans.RC = -1
		ans.Out += "\n" + err.Error()
	}
	return ans
}
