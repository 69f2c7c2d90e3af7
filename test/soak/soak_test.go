// Package soak runs the real blockvol binary through rounds of Create,
// Mount, Unmount and Remove, killing it with SIGKILL at a random moment of
// each round (during a losetup or a mkfs slowed by a PATH shim in some
// rounds), restarting it and finishing the round as a user would. After
// every round nothing may be left (loop devices, mounts, records, images)
// and nothing may contradict what the plugin answered.
//
// `make soak` runs 200 rounds; `go test ./...` runs a short version (see
// roundsFlag). Everything lives in a temporary directory of the test: its
// own socket, state, mount and data directories; only loop devices whose
// backing file is in that directory are looked at or cleaned.
package soak

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/blockvol/blockvol/internal/testenv"
)

var roundsFlag = flag.Int("soak.rounds", 0, "rounds of the soak (default: $BLOCKVOL_SOAK_ROUNDS, else 20)")

func rounds() int {
	if *roundsFlag > 0 {
		return *roundsFlag
	}
	if n, err := strconv.Atoi(os.Getenv("BLOCKVOL_SOAK_ROUNDS")); err == nil && n > 0 {
		return n
	}
	return 20
}

// soak is one plugin under test and its directories.
type soak struct {
	t                             *testing.T
	bin, dir, sock, cfg           string
	stateDir, mntDir, dataDir     string
	shimDir                       string
	plugin                        *exec.Cmd
	exited                        chan struct{}
	client                        *http.Client
	leaks, inconsistencies, kills int
	slowKills                     int
	spans                         [2]time.Duration // of a whole sequence: normal, slowed
	leakKinds                     map[string]int
}

func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("the soak runs the real plugin on real loop devices")
	}
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "losetup", "mkfs.ext4", "blkid", "wipefs", "e2fsck", "blockdev", "go")
	s := newSoak(t)
	n := rounds()
	seed := time.Now().UnixNano()
	rng := rand.New(rand.NewPCG(uint64(seed), 8))
	t.Logf("seed %d", seed)
	for i := range n {
		slow := i%4 == 3 // a slowed losetup and mkfs in one round of four
		s.round(i, rng, slow)
	}
	summary := fmt.Sprintf("soak: %d rounds (%d killed mid-sequence, %d of them slowed), %d leaks %v, %d inconsistencies", n, s.kills, s.slowKills, s.leaks, s.leakKinds, s.inconsistencies)
	fmt.Println(summary)
	t.Log(summary)
	if s.leaks != 0 || s.inconsistencies != 0 {
		t.Fatalf("%s; plugin logs in %s", summary, s.dir)
	}
}

var (
	buildOnce sync.Once
	built     string
	buildErr  error
)

// binary returns the blockvol binary under test, built once per test run
// ($BLOCKVOL_SOAK_BIN instead, to show what the soak finds in another
// build).
func binary(t *testing.T) string {
	if bin := os.Getenv("BLOCKVOL_SOAK_BIN"); bin != "" {
		return bin
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "bvsoak-bin-")
		if err != nil {
			buildErr = err
			return
		}
		built = filepath.Join(dir, "blockvol")
		if out, err := exec.Command("go", "build", "-o", built, "../../cmd/blockvol").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build blockvol: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return built
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built != "" {
		os.RemoveAll(filepath.Dir(built))
	}
	os.Exit(code)
}

func newSoak(t *testing.T) *soak {
	dir, err := os.MkdirTemp("", "bvsoak-")
	if err != nil {
		t.Fatal(err)
	}
	s := &soak{
		t: t, dir: dir,
		bin:       filepath.Join(dir, "blockvol"),
		sock:      filepath.Join(dir, "bvsoak.sock"),
		cfg:       filepath.Join(dir, "config.toml"),
		stateDir:  filepath.Join(dir, "state"),
		mntDir:    filepath.Join(dir, "mnt"),
		dataDir:   filepath.Join(dir, "data"),
		shimDir:   filepath.Join(dir, "shims"),
		leakKinds: map[string]int{},
		spans:     [2]time.Duration{time.Second, 3 * time.Second},
	}
	t.Cleanup(func() {
		s.stop()
		s.clean()
		if !t.Failed() {
			os.RemoveAll(dir)
		}
	})
	s.bin = binary(t)
	cfg := fmt.Sprintf(`name = "bvsoak"
socket = %q
state_dir = %q
mount_dir = %q
log_level = "debug"
default_backend = "local"
[defaults]
size = "16M"
fstype = "ext4"
[backends.local]
type = "loop"
data_dir = %q
`, s.sock, s.stateDir, s.mntDir, s.dataDir)
	if err := os.WriteFile(s.cfg, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// Shims that make the slow steps slower, so that kills land in them.
	if err := os.MkdirAll(s.shimDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tool := range []string{"losetup", "mkfs.ext4"} {
		real, err := exec.LookPath(tool)
		if err != nil {
			t.Fatal(err)
		}
		shim := fmt.Sprintf("#!/bin/sh\nsleep 0.3\nexec %s \"$@\"\n", real)
		if err := os.WriteFile(filepath.Join(s.shimDir, tool), []byte(shim), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s.client = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", s.sock)
		},
		DisableKeepAlives: true,
	}}
	return s
}

// start runs the plugin (with the slowing shims first on its PATH when
// slow) and waits until it answers.
func (s *soak) start(slow bool) {
	s.t.Helper()
	env := os.Environ()
	if slow {
		env = append(env, "PATH="+s.shimDir+":"+os.Getenv("PATH"))
	}
	logf, err := os.OpenFile(filepath.Join(s.dir, "plugin.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		s.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(s.bin, "serve", "--config", s.cfg)
	cmd.Env, cmd.Stdout, cmd.Stderr = env, logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.plugin, s.exited = cmd, make(chan struct{})
	go func(done chan struct{}) { _ = cmd.Wait(); close(done) }(s.exited)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	for {
		if err := s.call(context.Background(), "/Plugin.Activate", nil, nil); err == nil {
			return
		}
		select {
		case <-s.exited:
			s.t.Fatalf("the plugin exited at start; see %s/plugin.log", s.dir)
		case <-deadline:
			s.t.Fatalf("the plugin does not answer; see %s/plugin.log", s.dir)
		case <-tick.C:
		}
	}
}

// kill9 kills the plugin alone, as a crash would, and reaps it.
func (s *soak) kill9() {
	if s.plugin == nil {
		return
	}
	_ = s.plugin.Process.Signal(syscall.SIGKILL)
	<-s.exited
	s.plugin = nil
}

// stop ends the plugin (at the end of the test).
func (s *soak) stop() {
	if s.plugin != nil {
		_ = s.plugin.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(30 * time.Second):
			_ = s.plugin.Process.Signal(syscall.SIGKILL)
			<-s.exited
		}
		s.plugin = nil
	}
}

type pluginError string

func (e pluginError) Error() string { return string(e) }

// call posts one VolumeDriver request; an Err in the answer is a
// pluginError.
func (s *soak) call(ctx context.Context, path string, req, resp any) error {
	body := []byte("{}")
	if req != nil {
		body, _ = json.Marshal(req)
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://plugin"+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hr.Header.Set("Accept", "application/vnd.docker.plugins.v1.2+json")
	res, err := s.client.Do(hr)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	var raw json.RawMessage
	if err := json.NewDecoder(res.Body).Decode(&raw); err != nil {
		return fmt.Errorf("%s: status %d: %w", path, res.StatusCode, err)
	}
	var e struct{ Err string }
	_ = json.Unmarshal(raw, &e)
	if e.Err != "" {
		return pluginError(e.Err)
	}
	if resp != nil {
		return json.Unmarshal(raw, resp)
	}
	return nil
}

type nameReq struct {
	Name string
	ID   string            `json:",omitempty"`
	Opts map[string]string `json:",omitempty"`
}

// progress is what the round's user was told, step by step.
type progress struct {
	created, mountSent, mounted, wrote, unmountSent, removeSent, removed bool
	mountpoint                                                           string
}

// round runs one Create/Mount/Unmount/Remove sequence, kills the plugin
// at a random moment of it, restarts it and finishes the sequence; then
// checks what the host and the plugin say.
func (s *soak) round(i int, rng *rand.Rand, slow bool) {
	s.t.Helper()
	name := fmt.Sprintf("bvsoak%d", i)
	id := fmt.Sprintf("%064x", i+1)
	s.start(slow)

	// Kill at a uniformly random moment of the sequence, as long as the
	// last whole sequence of this kind took.
	span := &s.spans[0]
	if slow {
		span = &s.spans[1]
	}
	killAt := time.Duration(rng.Int64N(int64(*span) + 1))
	var p progress
	done := make(chan struct{})
	began := time.Now()
	go func() {
		defer close(done)
		s.sequence(name, id, &p)
	}()
	select {
	case <-done:
		*span = time.Since(began)
	case <-time.After(killAt):
		s.kills++ // in the middle of the sequence
		if slow {
			s.slowKills++
		}
	}
	s.kill9()
	<-done // its call in flight fails with the plugin gone

	s.start(false)
	s.finish(name, id, p)
	s.kill9() // idle: each round starts a fresh process
	s.checkNothingLeft(name)
}

// sequence is one user's life of a volume, stopping at the first error
// (the plugin was killed).
func (s *soak) sequence(name, id string, p *progress) {
	ctx := context.Background()
	if s.call(ctx, "/VolumeDriver.Create", nameReq{Name: name}, nil) != nil {
		return
	}
	p.created = true
	var m struct{ Mountpoint string }
	p.mountSent = true
	if s.call(ctx, "/VolumeDriver.Mount", nameReq{Name: name, ID: id}, &m) != nil {
		return
	}
	p.mounted, p.mountpoint = true, m.Mountpoint
	if entries, err := os.ReadDir(m.Mountpoint); err != nil || len(entries) != 0 {
		s.inconsistent("%s: a fresh volume holds %v (%v) at its first mount", name, entries, err)
	}
	if err := os.WriteFile(filepath.Join(m.Mountpoint, "data"), []byte(name), 0o600); err != nil {
		s.inconsistent("%s: mounted volume not writable: %v", name, err)
	}
	p.wrote = true
	p.unmountSent = true
	if s.call(ctx, "/VolumeDriver.Unmount", nameReq{Name: name, ID: id}, nil) != nil {
		return
	}
	p.removeSent = true
	if s.call(ctx, "/VolumeDriver.Remove", nameReq{Name: name}, nil) != nil {
		return
	}
	p.removed = true
}

// finish completes the round on the restarted plugin as a user who knows
// only the answers he got would, checking those answers still hold.
func (s *soak) finish(name, id string, p progress) {
	ctx := context.Background()
	var g struct {
		Volume struct {
			Name       string
			Mountpoint string
		}
	}
	err := s.call(ctx, "/VolumeDriver.Get", nameReq{Name: name}, &g)
	switch {
	case p.removed:
		if err == nil {
			s.inconsistent("%s: Get finds a volume whose Remove succeeded", name)
		}
	case p.created && !p.removeSent && err != nil:
		s.inconsistent("%s: Get after restart lost a created volume: %v", name, err)
	case p.mounted && !p.unmountSent && g.Volume.Mountpoint != p.mountpoint:
		s.inconsistent("%s: Get after restart says mountpoint %q, the user holds %q", name, g.Volume.Mountpoint, p.mountpoint)
	}
	if p.wrote && !p.unmountSent {
		if data, err := os.ReadFile(filepath.Join(p.mountpoint, "data")); err != nil || string(data) != name {
			s.inconsistent("%s: the user's mount lost its data across the restart: %q %v", name, data, err)
		}
	}
	if err != nil {
		return // never created, or removed: nothing to finish
	}
	if !p.mounted {
		// The user's first mount got no answer: he mounts again, and
		// gets the fresh, empty volume he asked for.
		var m struct{ Mountpoint string }
		if err := s.call(ctx, "/VolumeDriver.Mount", nameReq{Name: name, ID: id}, &m); err != nil {
			s.inconsistent("%s: Mount after restart: %v", name, err)
		} else if entries, err := os.ReadDir(m.Mountpoint); err != nil || len(entries) != 0 {
			s.inconsistent("%s: a volume never handed out holds %v (%v) after an interrupted first mount", name, entries, err)
		}
	}
	if err := s.call(ctx, "/VolumeDriver.Unmount", nameReq{Name: name, ID: id}, nil); err != nil {
		s.inconsistent("%s: Unmount after restart: %v", name, err)
	}
	if err := s.call(ctx, "/VolumeDriver.Remove", nameReq{Name: name}, nil); err != nil {
		s.inconsistent("%s: Remove after restart: %v", name, err)
	}
}

func (s *soak) inconsistent(format string, args ...any) {
	s.inconsistencies++
	s.t.Errorf("inconsistency: "+format, args...)
}

// checkNothingLeft counts, and then cleans, whatever the round left.
func (s *soak) checkNothingLeft(name string) {
	leak := func(kind, what string) {
		s.leaks++
		s.leakKinds[kind]++
		s.t.Errorf("leak after round of %s: %s %s", name, kind, what)
	}
	for _, dev := range s.loops() {
		leak("loop device", dev)
	}
	for _, mp := range s.mounts() {
		leak("mount", mp)
	}
	for _, dir := range []string{filepath.Join(s.stateDir, "volumes"), s.dataDir} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			kind := "record"
			if strings.HasSuffix(e.Name(), ".img") {
				kind = "image"
			}
			leak(kind, filepath.Join(dir, e.Name()))
		}
	}
	s.clean()
}

// loops lists the loop devices backed by a file of this soak (deleted
// ones included).
func (s *soak) loops() []string {
	var out []string
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err == nil && strings.HasPrefix(string(b), s.dir+"/") {
			out = append(out, "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(f))))
		}
	}
	return out
}

// mounts lists the mount points under this soak's directory.
func (s *soak) mounts() []string {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], s.dir+"/") {
			out = append(out, f[4])
		}
	}
	return out
}

// clean removes what a round left, so that the next round starts clean:
// only this soak's mounts, loop devices and files.
func (s *soak) clean() {
	for _, mp := range s.mounts() {
		_ = exec.Command("umount", "-l", mp).Run()
	}
	for _, dev := range s.loops() {
		_ = exec.Command("losetup", "-d", dev).Run()
	}
	for _, dir := range []string{filepath.Join(s.stateDir, "volumes"), s.dataDir, s.mntDir} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
}
