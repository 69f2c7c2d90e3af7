// Package managed tests blockvol as a Docker managed (v2) plugin, built by
// docker-plugin/build.sh and created, enabled, upgraded and restarted by
// a real dockerd of the test's own: its own data root, exec root, API
// socket and registry (127.0.0.1, for `docker plugin upgrade`), inside a
// private mount namespace whose /run/docker/plugins is an empty tmpfs, so
// that it neither sees nor touches the host's plugins and volumes. The
// plugin, its volumes and its state directory are named bvmp-<run>.
package managed

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// repoRoot is the repository this test runs in.
func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Clean(filepath.Join(wd, "..", ".."))
}

// env is what child processes get: the sbin directories, no DOCKER_*.
func childEnv(extra ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DOCKER_") && !strings.HasPrefix(kv, "PATH=") {
			out = append(out, kv)
		}
	}
	out = append(out, "PATH=/usr/local/go/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	return append(out, extra...)
}

// run runs a command to completion with a deadline; the error carries
// its output.
func run(ctx context.Context, env []string, name string, args ...string) (string, error) {
	return runIn(ctx, env, "", name, args...)
}

// runIn is run with stdin.
func runIn(ctx context.Context, env []string, stdin, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	cmd.Stdin = strings.NewReader(stdin)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// holder keeps the private mount namespace alive across dockerd restarts:
// every dockerd of the test enters it with nsenter. It dies with the test
// (Pdeathsig), and the namespace with its last process.
type holder struct {
	cmd *exec.Cmd
}

func startHolder(t *testing.T) *holder {
	t.Helper()
	if err := os.MkdirAll("/run/docker/plugins", 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		"mount -t tmpfs bvmp-plugins /run/docker/plugins && echo ready && exec sleep 86400")
	cmd.Env = childEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := io.ReadFull(out, buf); err != nil || string(buf) != "ready\n" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("mount namespace holder did not start: %v %q", err, buf)
	}
	return &holder{cmd: cmd}
}

func (h *holder) pid() int { return h.cmd.Process.Pid }

func (h *holder) stop() {
	_ = h.cmd.Process.Kill()
	_ = h.cmd.Wait()
}

// mountinfo is the namespace's mount table.
func (h *holder) mountinfo(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", h.pid()))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// daemon is the test's dockerd inside the holder's namespace.
type daemon struct {
	h       *holder
	root    string // data under root/data
	exec    string // exec root (short: plugin socket paths must fit sun_path)
	sock    string
	log     string
	client  string
	cfgDir  string
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
}

func newDaemon(t *testing.T, h *holder, root string) *daemon {
	t.Helper()
	execRoot, err := os.MkdirTemp("/run", "bvmp")
	if err != nil {
		t.Fatal(err)
	}
	client := "/usr/bin/docker" // Debian's CLI, matching its dockerd
	if _, err := os.Stat(client); err != nil {
		client = "docker"
	}
	d := &daemon{h: h, root: root, exec: execRoot, sock: filepath.Join(root, "docker.sock"),
		log: filepath.Join(root, "dockerd.log"), client: client, cfgDir: filepath.Join(root, "docker-config")}
	if err := os.MkdirAll(d.cfgDir, 0o700); err != nil {
		t.Fatal(err)
	}
	return d
}

// start starts dockerd with live-restore on or off and waits for its API.
func (d *daemon) start(t *testing.T, liveRestore bool) {
	t.Helper()
	cfg := filepath.Join(d.root, "daemon.json")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("{\"live-restore\": %t}\n", liveRestore)), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.OpenFile(d.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	d.cmd = exec.Command("nsenter", "--target", strconv.Itoa(d.h.pid()), "--mount", "--",
		"dockerd", "--config-file", cfg, "--bridge=none", "--iptables=false", "--ip-masq=false",
		"--data-root", filepath.Join(d.root, "data"), "--exec-root", d.exec,
		"--pidfile", filepath.Join(d.root, "dockerd.pid"), "-H", "unix://"+d.sock)
	d.cmd.Env = childEnv()
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.done = make(chan struct{})
	go func() { d.waitErr = d.cmd.Wait(); close(d.done) }()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if c, err := net.Dial("unix", d.sock); err == nil {
			c.Close()
			if _, err := d.docker(ctx, "version"); err == nil {
				return
			}
		}
		select {
		case <-d.done:
			t.Fatalf("dockerd exited: %v\n%s", d.waitErr, d.logTail())
		case <-ctx.Done():
			t.Fatalf("dockerd did not answer\n%s", d.logTail())
		case <-tick.C:
		}
	}
}

// stop stops dockerd with SIGTERM (as systemd does) and waits.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	if d.cmd == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(60 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
		t.Errorf("dockerd did not stop within 60 s of SIGTERM")
	}
	d.cmd = nil
}

func (d *daemon) logTail() string {
	b, _ := os.ReadFile(d.log)
	lines := strings.Split(string(b), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return strings.Join(lines, "\n")
}

func (d *daemon) docker(ctx context.Context, args ...string) (string, error) {
	return d.dockerIn(ctx, "", args...)
}

// dockerIn runs the docker CLI with stdin (the answer to its questions).
func (d *daemon) dockerIn(ctx context.Context, stdin string, args ...string) (string, error) {
	return runIn(ctx, childEnv("DOCKER_HOST=unix://"+d.sock, "DOCKER_CONFIG="+d.cfgDir, "DOCKER_CLI_HINTS=false"), stdin, d.client, args...)
}

// must runs a docker command that must succeed, with Docker's longest
// call limit as deadline.
func (d *daemon) must(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := d.docker(ctx, args...)
	if err != nil {
		t.Fatalf("%v\ndockerd log:\n%s", err, d.logTail())
	}
	return strings.TrimSpace(out)
}

// enable enables plugin ref. A shim that died before the plugin's process
// was made ("failed to create shim task": once, on a fresh CI machine,
// while other test packages ran, it could not open the FIFOs dockerd had
// made) is containerd's and never blockvol's: that one failure is retried
// once, and logged.
func (d *daemon) enable(t *testing.T, ref string) {
	t.Helper()
	out, err := d.try(t, "plugin", "enable", ref)
	if err != nil && strings.Contains(out, "failed to create shim task") {
		t.Logf("docker plugin enable %s failed before the plugin ran; retried once: %s", ref, strings.TrimSpace(out))
		_, err = d.try(t, "plugin", "enable", ref)
	}
	if err != nil {
		t.Fatalf("%v\ndockerd log:\n%s", err, d.logTail())
	}
}

// try runs a docker command that may fail.
func (d *daemon) try(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	return d.docker(ctx, args...)
}

// importBusybox imports a one-file image: the static busybox.
func (d *daemon) importBusybox(t *testing.T, tag string) {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal(err)
	}
	if bb, err = filepath.EvalSymlinks(bb); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	tarPath := filepath.Join(d.root, "busybox.tar")
	f, err := os.Create(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	for _, dir := range []string{"bin/", "tmp/", "data/"} {
		if err := tw.WriteHeader(&tar.Header{Name: dir, Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.WriteHeader(&tar.Header{Name: "bin/busybox", Mode: 0o755, Size: int64(len(data))}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	d.must(t, "import", tarPath, tag)
}

// registry is a private docker-registry on 127.0.0.1, the only way to give
// `docker plugin upgrade` a new version.
type registry struct {
	addr string
	cmd  *exec.Cmd
}

func startRegistry(t *testing.T, root string) *registry {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := filepath.Join(root, "registry.yml")
	conf := fmt.Sprintf("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\nlog:\n  level: warn\n", filepath.Join(root, "registry"), addr)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(root, "registry.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("docker-registry", "serve", cfg)
	cmd.Env = childEnv()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &registry{addr: addr, cmd: cmd}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	for {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return r
		}
		select {
		case <-deadline:
			r.stop()
			t.Fatalf("docker-registry did not listen on %s", addr)
		case <-tick.C:
		}
	}
}

func (r *registry) stop() {
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
}
