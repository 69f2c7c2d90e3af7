package main

import (
	"context"
	"fmt"
	"github.com/blockvol/blockvol/plugin"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/volume"
)

// asMainEnv makes the test binary run as blockvol itself (see TestMain):
// tests start the real program without building it.
const asMainEnv = "BLOCKVOL_TEST_AS_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asMainEnv) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// child is a blockvol process started by a test. Its output goes to a log
// file, never to the test's own stdout/stderr; it is stopped by its PID.
type child struct {
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error
}

// startBlockvol runs `blockvol args...` (the test binary as blockvol). With
// files it is started the way systemd starts an activated service:
// through `sh -c 'LISTEN_PID=$$ exec ...'`, so that LISTEN_PID is the pid
// of blockvol itself (go-systemd checks LISTEN_PID == getpid()), with files
// as fds 3, 4, ...
func startBlockvol(t *testing.T, logPath string, files []*os.File, env []string, args ...string) *child {
	t.Helper()
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	var cmd *exec.Cmd
	if len(files) > 0 {
		cmd = exec.Command("/bin/sh", append([]string{"-c", `LISTEN_PID=$$ exec "$0" "$@"`, os.Args[0]}, args...)...)
		env = append(env, "LISTEN_FDS="+strconv.Itoa(len(files)), "LISTEN_FDNAMES=blockvol.socket")
	} else {
		cmd = exec.Command(os.Args[0], args...)
	}
	cmd.Env = append(append(os.Environ(), asMainEnv+"=1"), env...)
	cmd.ExtraFiles = files
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() { c.err = cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		if !c.exited() {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-c.done
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("blockvol log (%s):\n%s", logPath, b)
		}
	})
	return c
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the child's PID and returns its exit error, failing
// the test if it does not exit within 20 s.
func (c *child) stop(t *testing.T) error {
	t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.done:
		return c.err
	case <-time.After(20 * time.Second):
		t.Fatalf("blockvol pid %d still running 20 s after SIGTERM", c.cmd.Process.Pid)
		return nil
	}
}

// waitAnswer waits until the plugin at sock answers Plugin.Activate.
func waitAnswer(t *testing.T, sock string, c *child) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl := newPluginClient(sock)
	for {
		err := cl.activate(ctx)
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("plugin at %s never answered: %v", sock, err)
		case <-c.done:
			t.Fatalf("blockvol exited before answering: %v", c.err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// testConfig writes a loop-only configuration under dir and returns its
// path and socket. extra is appended (a [metrics] table, say).
func testConfig(t *testing.T, dir, extra string) (path, sock string) {
	t.Helper()
	sock = filepath.Join(dir, "plugin.sock")
	path = filepath.Join(dir, "config.toml")
	text := fmt.Sprintf(`name = "bvtest"
socket = %q
state_dir = %q
log_level = "debug"
[backends.local]
type = "loop"
data_dir = %q
`, sock, filepath.Join(dir, "state"), filepath.Join(dir, "loop")) + extra
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, sock
}

// fakeDriver is an in-memory volume.Driver that answers like blockvol
// (its error sentences included) and records every call.
type fakeDriver struct {
	mu       sync.Mutex
	vols     map[string]*fakeVol
	calls    []string
	inflight sync.WaitGroup
	// gate, when set, holds Create until it is closed; started is told
	// when such a Create begins.
	gate    chan struct{}
	started chan struct{}
}

type fakeVol struct {
	opts     map[string]string
	mountIDs map[string]bool
}

func newFakeDriver() *fakeDriver { return &fakeDriver{vols: map[string]*fakeVol{}} }

func (f *fakeDriver) log(call string) {
	f.mu.Lock()
	f.calls = append(f.calls, call)
	f.mu.Unlock()
}

func (f *fakeDriver) Create(r *volume.CreateRequest) error {
	f.inflight.Add(1)
	defer f.inflight.Done()
	f.log("create " + r.Name)
	if f.gate != nil {
		f.started <- struct{}{}
		<-f.gate
	}
	for k := range r.Options {
		switch k {
		case "size", "fstype":
		default:
			return fmt.Errorf("option %q is not known; known options: size, fstype", k)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.vols[r.Name]; !ok {
		f.vols[r.Name] = &fakeVol{opts: r.Options, mountIDs: map[string]bool{}}
	}
	return nil
}

func (f *fakeDriver) List() (*volume.ListResponse, error) {
	f.log("list")
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*volume.Volume
	for n, v := range f.vols {
		out = append(out, &volume.Volume{Name: n, Mountpoint: f.mountpoint(n, v)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return &volume.ListResponse{Volumes: out}, nil
}

func (f *fakeDriver) mountpoint(name string, v *fakeVol) string {
	if len(v.mountIDs) == 0 {
		return ""
	}
	return "/var/lib/blockvol/mounts/" + name
}

func (f *fakeDriver) Get(r *volume.GetRequest) (*volume.GetResponse, error) {
	f.log("get " + r.Name)
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vols[r.Name]
	if !ok {
		return nil, fmt.Errorf("volume %q does not exist", r.Name)
	}
	status := map[string]any{"backend": "local", "size": v.opts["size"] + "G", "fstype": v.opts["fstype"], "mountopts": []string{"noatime", "discard"}, "mounts": len(v.mountIDs)}
	return &volume.GetResponse{Volume: &volume.Volume{Name: r.Name, Mountpoint: f.mountpoint(r.Name, v), CreatedAt: "2026-11-24T12:00:00Z", Status: status}}, nil
}

func (f *fakeDriver) Remove(r *volume.RemoveRequest) error {
	f.log("remove " + r.Name)
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vols[r.Name]
	if !ok {
		return fmt.Errorf("volume %q does not exist", r.Name)
	}
	if len(v.mountIDs) > 0 {
		return fmt.Errorf("volume %q is mounted here by %d users; unmount it first", r.Name, len(v.mountIDs))
	}
	delete(f.vols, r.Name)
	return nil
}

func (f *fakeDriver) Path(r *volume.PathRequest) (*volume.PathResponse, error) {
	return &volume.PathResponse{}, nil
}

func (f *fakeDriver) Mount(r *volume.MountRequest) (*volume.MountResponse, error) {
	f.log(fmt.Sprintf("mount %s id=%q", r.Name, r.ID))
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vols[r.Name]
	if !ok {
		return nil, fmt.Errorf("volume %q does not exist", r.Name)
	}
	v.mountIDs[r.ID] = true
	return &volume.MountResponse{Mountpoint: f.mountpoint(r.Name, v)}, nil
}

func (f *fakeDriver) Unmount(r *volume.UnmountRequest) error {
	f.log(fmt.Sprintf("unmount %s id=%q", r.Name, r.ID))
	f.mu.Lock()
	defer f.mu.Unlock()
	if v, ok := f.vols[r.Name]; ok {
		delete(v.mountIDs, r.ID)
	}
	return nil
}

func (f *fakeDriver) Capabilities() *volume.CapabilitiesResponse {
	return &volume.CapabilitiesResponse{Capabilities: volume.Capability{Scope: "local"}}
}

func (f *fakeDriver) Wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() { f.inflight.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// serveFake serves drv on a fresh socket until the test ends.
func serveFake(t *testing.T, drv volume.Driver) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "fake.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = http.Serve(l, plugin.NewHandler(drv)) }()
	t.Cleanup(func() { l.Close() })
	return sock
}
