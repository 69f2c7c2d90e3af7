// Package e2e drives blockvol the way a user does: through a real Docker
// daemon, real containers, real loop devices and real filesystems.
//
// TestMain runs the package in a mount namespace of its own whose plugin
// directories are private, while a bystander plugin on the host checks that
// nothing outside was touched (namespace_test.go, bystander_test.go). There
// it starts one private dockerd for the whole package (its own data
// root, exec root and API socket under a temporary directory, no bridge, no
// iptables), imports a tiny busybox image into it, runs the tests, and tears
// everything down again: containers, dockerd, the plugins the tests started,
// and any mount or loop device left under its directory.
//
// The tests need root. Without root, or without dockerd, mkfs.xfs or busybox,
// every test skips with the reason; CI installs all of them, so CI never
// skips. Anything else that goes wrong while setting up is a failure.
//
// Plugins started by a test live until the end of the package, after the
// private dockerd has stopped: dockerd keeps every legacy plugin it has used,
// and a plugin socket that vanishes while dockerd still knows it stalls every
// later volume call about 15 s (see shared/FIELD-NOTES.md).
package e2e

import (
	"errors"
	"flag"
	"fmt"
	"github.com/blockvol/blockvol/internal/testenv"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// env is the package-wide fixture built by TestMain.
var env struct {
	short bool   // -short: no dockerd; every test skips
	skip  string // non-empty: every test skips with this reason
	setup error  // non-nil: every test fails with this error

	root    string   // private temporary directory of this run
	runID   string   // unique suffix of this run, part of every plugin name
	dockerd *dockerd // the private daemon
	image   string   // tag of the busybox image

	mu      sync.Mutex
	plugins []*Plugin // every plugin started, stopped after dockerd
	nextID  int
}

// requiredTools are the host programs whose absence skips the package.
var requiredTools = []string{"dockerd", "containerd", "mkfs.xfs", "mkfs.ext4", "busybox", "losetup"}

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	flag.Parse()
	if testing.Short() {
		// `make unit` starts no daemon.
		env.short = true
		return m.Run()
	}
	if os.Geteuid() != 0 {
		env.skip = "e2e tests need root (dockerd, loop devices, mounts)"
		return m.Run()
	}
	// Root's tools live in the sbin directories, which a CI PATH may lack.
	for _, kv := range childEnv() {
		if path, ok := strings.CutPrefix(kv, "PATH="); ok {
			os.Setenv("PATH", path)
		}
	}
	var missing []string
	for _, tool := range requiredTools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if _, err := dockerClientPath(); err != nil {
		missing = append(missing, "docker")
	}
	if len(missing) > 0 {
		env.skip = "e2e tests need " + strings.Join(missing, ", ") + " (install docker.io, xfsprogs, busybox-static)"
		return m.Run()
	}

	if !insideNamespace() {
		return runOutside()
	}
	if err := privatizeNamespace(); err != nil {
		env.setup = err
		fmt.Fprintf(os.Stderr, "e2e: setup failed: %v\n", err)
		return m.Run()
	}
	if err := setUp(); err != nil {
		env.setup = err
		fmt.Fprintf(os.Stderr, "e2e: setup failed: %v\n", err)
	}
	code := m.Run()
	if err := tearDown(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: teardown: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// runOutside runs the package in a mount namespace of its own (see
// namespace_test.go) while a bystander plugin runs on the host, and fails
// the package if the bystander was touched.
func runOutside() int {
	sweepStaleRuns()
	by, err := startBystander()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: setup failed: bystander plugin: %v\nFAIL\n", err)
		return 1
	}
	code := runInNamespace()
	if err := by.check(); err != nil {
		fmt.Fprintf(os.Stderr, "--- FAIL: bystander (after the whole package)\n    %v\nFAIL\n", err)
		code = 1
	}
	if err := by.stop(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: bystander teardown: %v\n", err)
		code = 1
	}
	return code
}

// setUp creates the run directory, starts dockerd and imports the image.
func setUp() error {
	root, err := os.MkdirTemp(runParent, runPrefix)
	if err != nil {
		return err
	}
	env.root = root
	env.runID = strings.TrimPrefix(root[len(runParent)+1:], runPrefix)
	if err := lockRun(root); err != nil {
		return err
	}
	d, err := startDockerd(root)
	if err != nil {
		return err
	}
	env.dockerd = d
	tag, err := buildImage(d, root)
	if err != nil {
		return fmt.Errorf("build busybox image: %w", err)
	}
	env.image = tag
	return nil
}

// tearDown removes containers and volumes while the plugins still serve,
// stops dockerd, then the plugins, then cleans the host.
func tearDown() error {
	if env.root == "" {
		return nil
	}
	var errs []error
	if d := env.dockerd; d != nil {
		d.removeAll()
		if err := d.stop(); err != nil {
			errs = append(errs, err)
		}
	}
	env.mu.Lock()
	plugins := env.plugins
	env.mu.Unlock()
	for _, p := range plugins {
		// TestPluginStopsCleanly judges SIGTERM handling; here a
		// plugin that misbehaves is only reported.
		if err := p.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: teardown: %v\n", err)
		}
		p.removeSocket()
	}
	if err := cleanHost(env.root); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// requireRoot skips the test when not run as root.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Skip(t, "needs root")
	}
}

// requireDocker skips or fails the test as the package setup dictates, and
// prints the private dockerd's log lines written during the test if it fails.
func requireDocker(t testing.TB) *dockerd {
	t.Helper()
	skipUnlessSetUp(t)
	d := env.dockerd
	from := d.logSize()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("dockerd log during the test (%s):\n%s", d.logPath, d.logSince(from))
		}
	})
	return d
}

// skipUnlessSetUp skips t in -short mode (plainly), without root, or when
// TestMain found a prerequisite missing (see testenv.Skip); it fails t when
// the package setup failed.
func skipUnlessSetUp(t testing.TB) {
	t.Helper()
	if env.short {
		testenv.RequireLong(t, "dockerd")
	}
	requireRoot(t)
	if env.skip != "" {
		testenv.Skip(t, env.skip)
	}
	if env.setup != nil {
		t.Fatalf("e2e setup failed: %v", env.setup)
	}
}

// isNotExist reports whether err means that a path does not exist.
func isNotExist(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOENT)
}

// `make unit` (-short) starts no dockerd and no plugin.
func TestShortModeStartsNoDaemon(t *testing.T) {
	if !testing.Short() {
		t.Skip("checks -short mode only")
	}
	if env.dockerd != nil || env.root != "" {
		t.Fatalf("-short started the private dockerd (run dir %s)", env.root)
	}
}
