package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	runParent = "/var/tmp" // not /tmp: overlay2 needs a real filesystem
	runPrefix = "blockvol-e2e-"

	dockerTimeout = 2 * time.Minute // Docker's own Create/Mount limit
)

// dockerd is the package's private Docker daemon.
type dockerd struct {
	*proc
	root    string // run directory
	sock    string // API socket
	logPath string
	client  string // docker CLI binary
	cfgDir  string // DOCKER_CONFIG of the CLI
}

// dockerClientPath prefers Debian's docker.io CLI, which matches its dockerd
// (/usr/local/bin/docker may be a newer client that shadows it).
func dockerClientPath() (string, error) {
	for _, p := range []string{"/usr/bin/docker", "/bin/docker"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	return exec.LookPath("docker")
}

// startDockerd starts dockerd under root and waits until its API answers.
func startDockerd(root string) (*dockerd, error) {
	client, err := dockerClientPath()
	if err != nil {
		return nil, err
	}
	d := &dockerd{
		root:    root,
		sock:    filepath.Join(root, "docker.sock"),
		logPath: filepath.Join(root, "dockerd.log"),
		client:  client,
		cfgDir:  filepath.Join(root, "docker-config"),
	}
	if err := os.MkdirAll(d.cfgDir, 0o700); err != nil {
		return nil, err
	}
	// An empty daemon.json keeps the host's /etc/docker/daemon.json out.
	daemonJSON := filepath.Join(root, "daemon.json")
	if err := os.WriteFile(daemonJSON, []byte("{}\n"), 0o644); err != nil {
		return nil, err
	}
	bin, err := exec.LookPath("dockerd")
	if err != nil {
		return nil, err
	}
	argv := []string{bin,
		"--config-file", daemonJSON,
		"--bridge=none", "--iptables=false", "--ip-masq=false",
		"--data-root", filepath.Join(root, "data"),
		"--exec-root", filepath.Join(root, "exec"),
		"--pidfile", filepath.Join(root, "dockerd.pid"),
		"-H", "unix://" + d.sock,
	}
	p, err := startProc(argv, d.logPath, childEnv())
	if err != nil {
		return nil, err
	}
	d.proc = p

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	hc := unixHTTPClient(d.sock)
	err = poll(ctx, 100*time.Millisecond, p.done, func(ctx context.Context) (bool, error) {
		return httpOK(ctx, hc, http.MethodGet, "http://docker/_ping", "")
	})
	if err != nil {
		_ = d.stop()
		return nil, fmt.Errorf("dockerd did not answer on %s: %w\n%s", d.sock, err, d.logTail(30))
	}
	return d, nil
}

// stop stops dockerd (SIGTERM, 30 s, SIGKILL) and the containerd it started.
func (d *dockerd) stop() error {
	err := d.proc.stop(30 * time.Second)
	// dockerd normally stops its containerd; make sure, by its pid file,
	// and only if that process really is ours.
	pidFile := filepath.Join(d.root, "exec", "containerd", "containerd.pid")
	if b, rerr := os.ReadFile(pidFile); rerr == nil {
		if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil && pid > 1 {
			if cmdline, cerr := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); cerr == nil &&
				strings.Contains(string(cmdline), d.root) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	return err
}

// run runs the docker CLI against the private daemon.
func (d *dockerd) run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, d.client, args...)
	cmd.Env = childEnv("DOCKER_HOST=unix://"+d.sock, "DOCKER_CONFIG="+d.cfgDir, "DOCKER_CLI_HINTS=false")
	var stdout, stderr strings.Builder
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return stdout.String(), &cmdError{argv: append([]string{"docker"}, args...), stderr: stderr.String(), err: err}
	}
	return stdout.String(), nil
}

// removeAll removes every container of the private dockerd (its data root
// is the run's own) and the volumes of the run's own drivers, logging
// failures: it runs at teardown, while the plugins still serve. A volume of
// any other driver is never touched.
func (d *dockerd) removeAll() {
	ctx, cancel := context.WithTimeout(context.Background(), dockerTimeout)
	defer cancel()
	if out, err := d.run(ctx, "ps", "-aq"); err == nil && strings.TrimSpace(out) != "" {
		if _, err := d.run(ctx, append([]string{"rm", "-f"}, strings.Fields(out)...)...); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: teardown: %v\n", err)
		}
	}
	out, err := d.run(ctx, "volume", "ls", "--format", "{{.Driver}} {{.Name}}")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: teardown: %v\n", err)
		return
	}
	for _, v := range ownVolumes(out, ownDrivers()) {
		if _, err := d.run(ctx, "volume", "rm", "-f", v); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: teardown: %v\n", err)
		}
	}
}

// ownDrivers are the volume drivers of this run: Docker's local driver
// (the private dockerd's data root is the run's) and the plugins it started.
func ownDrivers() map[string]bool {
	own := map[string]bool{"local": true}
	env.mu.Lock()
	defer env.mu.Unlock()
	for _, p := range env.plugins {
		own[p.Config.Name] = true
	}
	return own
}

// ownVolumes picks from `docker volume ls --format '{{.Driver}} {{.Name}}'`
// the names of volumes whose driver is one of own.
func ownVolumes(ls string, own map[string]bool) []string {
	var out []string
	for _, line := range strings.Split(ls, "\n") {
		driver, name, ok := strings.Cut(strings.TrimSpace(line), " ")
		if ok && own[driver] {
			out = append(out, name)
		}
	}
	return out
}

func (d *dockerd) logSize() int64 { return fileSize(d.logPath) }

// fileSize is the size of a file, 0 if it cannot be read.
func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logSince returns the log written after offset, without the gRPC chatter.
func (d *dockerd) logSince(offset int64) string {
	b, err := os.ReadFile(d.logPath)
	if err != nil {
		return err.Error()
	}
	if offset > int64(len(b)) {
		offset = 0
	}
	var keep []string
	for _, l := range strings.Split(string(b[offset:]), "\n") {
		if l != "" && !strings.Contains(l, "module=grpc") {
			keep = append(keep, l)
		}
	}
	if len(keep) > 200 {
		keep = keep[len(keep)-200:]
	}
	return strings.Join(keep, "\n")
}

// docker runs the docker CLI against the private daemon with a timeout and
// returns stdout; a failure's error includes the CLI's stderr.
func docker(t testing.TB, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), dockerTimeout)
	defer cancel()
	start := time.Now()
	out, err := env.dockerd.run(ctx, args...)
	if d := time.Since(start); d > 10*time.Second {
		t.Logf("docker %s took %s", strings.Join(args, " "), d.Round(time.Millisecond))
	}
	return out, err
}

// mustDocker is docker that fails the test on error.
func mustDocker(t testing.TB, args ...string) string {
	t.Helper()
	out, err := docker(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// runContainer runs `docker run --network none ARGS...` in the foreground
// and returns its output; use "--rm" in args for throw-away containers.
func runContainer(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return docker(t, append([]string{"run", "--network", "none"}, args...)...)
}

// startContainer runs a detached container with the volume mounted at
// /data and the given shell script, and removes it at the end of the test.
func startContainer(t testing.TB, volume, script string) string {
	t.Helper()
	out := mustDocker(t, "run", "-d", "--network", "none", "-v", volume+":/data", env.image, "sh", "-c", script)
	id := strings.TrimSpace(out)
	t.Cleanup(func() { _, _ = docker(t, "rm", "-f", id) })
	return id
}

// idleScript keeps a container alive and lets `docker stop` end it at once
// (a shell as PID 1 ignores SIGTERM unless it traps it).
const idleScript = `trap "exit 0" TERM; sleep 600 & wait`

// unixHTTPClient talks HTTP over a unix socket.
func unixHTTPClient(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true,
	}}
}

// httpOK makes one request and reports whether it answered 200 with a body
// containing want.
func httpOK(ctx context.Context, hc *http.Client, method, url, want string) (bool, error) {
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, method, url, nil)
	if err != nil {
		return false, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	var body strings.Builder
	buf := make([]byte, 4096)
	for {
		n, rerr := resp.Body.Read(buf)
		body.Write(buf[:n])
		if rerr != nil {
			break
		}
	}
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, body.String())
	}
	if !strings.Contains(body.String(), want) {
		return false, fmt.Errorf("%s %s: body %q lacks %q", method, url, body.String(), want)
	}
	return true, nil
}

// lockFile is held for the life of the run; sweepStaleRuns leaves locked
// run directories alone.
var lockFile *os.File

func lockRun(root string) error {
	f, err := os.OpenFile(filepath.Join(root, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return fmt.Errorf("lock %s: %w", root, err)
	}
	lockFile = f
	return nil
}

// sweepStaleRuns cleans the directories of earlier runs that died without
// tearing down (their lock is free): mounts, loop devices, plugin sockets.
func sweepStaleRuns() {
	dirs, _ := filepath.Glob(filepath.Join(runParent, runPrefix+"*"))
	for _, dir := range dirs {
		f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR, 0)
		if err != nil {
			continue // not a run directory, or one still being created
		}
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err != nil {
			f.Close()
			continue // a live run
		}
		if pidAlive(filepath.Join(dir, "dockerd.pid")) {
			fmt.Fprintf(os.Stderr, "e2e: %s: its dockerd still runs; leaving it\n", dir)
			f.Close()
			continue
		}
		killLeftovers(dir)
		id := strings.TrimPrefix(filepath.Base(dir), runPrefix)
		socks, _ := filepath.Glob(filepath.Join(pluginSocketDir, runPrefix+id+"-*.sock"))
		for _, s := range socks {
			if !socketListening(s) {
				_ = os.Remove(s)
			}
		}
		if err := cleanHost(dir); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: sweeping %s: %v\n", dir, err)
		}
		f.Close()
	}
}

// killLeftovers ends what a run killed mid-way leaves running although
// dockerd, containerd and the plugins died with it (Pdeathsig): containers
// (through runc, by their state under the run's exec root) and their
// containerd shims, found by PID as processes whose command line names the
// run directory.
func killLeftovers(dir string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	runcRoot := filepath.Join(dir, "exec", "runtime-runc", "moby")
	if _, err := os.Stat(runcRoot); err == nil {
		if out, err := runCmd(ctx, "runc", "--root", runcRoot, "list", "-q"); err == nil {
			for _, id := range strings.Fields(out) {
				if _, err := runCmd(ctx, "runc", "--root", runcRoot, "delete", "--force", id); err != nil {
					fmt.Fprintf(os.Stderr, "e2e: sweeping %s: %v\n", dir, err)
				}
			}
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range procs {
		b, err := os.ReadFile(f)
		if err != nil || !strings.Contains(string(b), dir+"/") {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(f)))
		if err != nil || pid == os.Getpid() {
			continue
		}
		fmt.Fprintf(os.Stderr, "e2e: sweeping %s: killing leftover pid %d (%s)\n", dir, pid, strings.ReplaceAll(string(b), "\x00", " "))
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func pidAlive(pidFile string) bool {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return false
	}
	return syscall.Kill(pid, 0) == nil
}

const pluginSocketDir = "/run/docker/plugins"

func socketListening(path string) bool {
	c, err := net.DialTimeout("unix", path, 500*time.Millisecond)
	if err != nil {
		return !errors.Is(err, syscall.ECONNREFUSED) && !isNotExist(err)
	}
	c.Close()
	return true
}

// The teardown removes the volumes of the run's own drivers only.
func TestTeardownPicksOnlyOwnVolumes(t *testing.T) {
	ls := "local l1\nblockvol-e2e-x-1 v1\nblockvol users-volume\nbvh-bystander-1 kept\n\nblockvol-e2e-x-2 v2\n"
	got := ownVolumes(ls, map[string]bool{"local": true, "blockvol-e2e-x-1": true, "blockvol-e2e-x-2": true})
	if want := []string{"l1", "v1", "v2"}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("ownVolumes = %q, want %q", got, want)
	}
}
