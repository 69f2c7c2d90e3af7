package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
)

// installScript returns the path of install.sh at the module root.
func installScript(t testing.TB) string {
	t.Helper()
	mod, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(mod, "install.sh")
}

// runInstall runs install.sh with args and returns its exit status and
// combined output, as an operator reads it.
func runInstall(t testing.TB, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{installScript(t)}, args...)...)
	cmd.Env = childEnv()
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out)
	default:
		t.Fatalf("install.sh %s: %v\n%s", strings.Join(args, " "), err, out)
		return -1, ""
	}
}

// mustInstall runs install.sh and fails the test unless it exits 0.
func mustInstall(t testing.TB, args ...string) string {
	t.Helper()
	code, out := runInstall(t, args...)
	if code != 0 {
		t.Fatalf("install.sh %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// installBinary is a blockvol binary for install.sh --binary: the e2e
// build when the package fixture is up, else one built here.
func installBinary(t *testing.T) string {
	t.Helper()
	if env.root != "" && env.setup == nil && env.skip == "" {
		return pluginBinary(t)
	}
	mod, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "blockvol")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/blockvol")
	cmd.Dir = mod
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return out
}

// fileFact is what "changes nothing" compares.
type fileFact struct {
	Mode  fs.FileMode
	MTime time.Time
	Sum   string
}

func snapshot(t *testing.T, root string) map[string]fileFact {
	t.Helper()
	facts := map[string]fileFact{}
	err := filepath.WalkDir(root, func(path string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := de.Info()
		if err != nil {
			return err
		}
		f := fileFact{Mode: fi.Mode(), MTime: fi.ModTime()}
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			f.Sum = hex.EncodeToString(sum[:])
		}
		facts[strings.TrimPrefix(path, root)] = f
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return facts
}

func requireMode(t *testing.T, path string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Errorf("%v", err)
		return
	}
	if fi.Mode().Perm() != want || !fi.Mode().IsRegular() {
		t.Errorf("%s: mode %v, want %04o", path, fi.Mode(), want)
	}
}

func requireGone(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s still exists (%v)", p, err)
		}
	}
}

// TestInstallDestdir: install.sh --destdir stages the binary (0755), the
// config (0600, from config.example.toml), the systemd units naming the
// installed binary and the config's socket, and the docs; a second run
// changes nothing; an operator's edited config is kept; --uninstall removes
// all but the config and volumes, and --purge those too.
func TestInstallDestdir(t *testing.T) {
	bin := installBinary(t)
	mod, _ := moduleRoot()
	dest := t.TempDir()

	out := mustInstall(t, "--destdir", dest, "--binary", bin)
	t.Logf("install.sh --destdir:\n%s", out)
	binPath := filepath.Join(dest, "usr/local/bin/blockvol")
	config := filepath.Join(dest, "etc/blockvol/config.toml")
	socketUnit := filepath.Join(dest, "etc/systemd/system/blockvol.socket")
	serviceUnit := filepath.Join(dest, "etc/systemd/system/blockvol.service")
	docDir := filepath.Join(dest, "usr/local/share/doc/blockvol")
	requireMode(t, binPath, 0o755)
	requireMode(t, config, 0o600)
	requireMode(t, socketUnit, 0o644)
	requireMode(t, serviceUnit, 0o644)
	requireMode(t, filepath.Join(docDir, "operating.md"), 0o644)
	example, _ := os.ReadFile(filepath.Join(mod, "config.example.toml"))
	if got, _ := os.ReadFile(config); string(got) != string(example) {
		t.Error("the installed config is not config.example.toml")
	}
	service, _ := os.ReadFile(serviceUnit)
	for _, want := range []string{
		"\nExecStart=/usr/local/bin/blockvol serve --config /etc/blockvol/config.toml\n",
		"\nRequires=blockvol.socket\n", "\nBefore=docker.service\n", "\nKillSignal=SIGTERM\n", "\nTimeoutStopSec=180s\n",
	} {
		if !strings.Contains(string(service), want) {
			t.Errorf("blockvol.service lacks %q", strings.TrimSpace(want))
		}
	}
	for _, line := range strings.Split(string(service), "\n") {
		for _, hiding := range []string{"PrivateMounts=", "ProtectSystem=", "MountFlags=", "PrivateTmp="} {
			if strings.HasPrefix(line, hiding) {
				t.Errorf("blockvol.service sets %s, which hides blockvol's mounts from dockerd", line)
			}
		}
	}
	socket, _ := os.ReadFile(socketUnit)
	for _, want := range []string{"\nListenStream=/run/docker/plugins/blockvol.sock\n", "\nSocketMode=0660\n", "\nBefore=docker.service\n", "\nWantedBy=sockets.target\n"} {
		if !strings.Contains(string(socket), want) {
			t.Errorf("blockvol.socket lacks %q", strings.TrimSpace(want))
		}
	}
	if !strings.Contains(out, "staged under "+dest) {
		t.Errorf("output does not say the tree is only staged:\n%s", out)
	}
	if b, err := exec.Command(binPath, "version").CombinedOutput(); err != nil {
		t.Errorf("installed binary: %v %s", err, b)
	}
	verifyUnits(t, dest, binPath)

	// Idempotent: a second run changes nothing, not even a time stamp.
	before := snapshot(t, dest)
	out = mustInstall(t, "--destdir", dest, "--binary", bin)
	if after := snapshot(t, dest); !reflect.DeepEqual(before, after) {
		t.Errorf("a second run changed the tree:\n%v\n%v", before, after)
	}
	if strings.Contains(out, "\ninstalled  ") || strings.HasPrefix(out, "installed  ") || !strings.Contains(out, "kept       "+config) {
		t.Errorf("second run output:\n%s", out)
	}

	// An operator's config is never overwritten; the socket unit follows
	// its driver name.
	edited := "name = \"edited\"\nstate_dir = \"/srv/blockvol/state\"\n\n[backends.local]\ntype = \"loop\"\ndata_dir = \"/srv/blockvol/images\"\n"
	if err := os.WriteFile(config, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	mustInstall(t, "--destdir", dest, "--binary", bin)
	if got, _ := os.ReadFile(config); string(got) != edited {
		t.Errorf("the edited config was changed to:\n%s", got)
	}
	if socket, _ := os.ReadFile(socketUnit); !strings.Contains(string(socket), "\nListenStream=/run/docker/plugins/edited.sock\n") {
		t.Errorf("socket unit does not follow the config's name:\n%s", socket)
	}

	// --uninstall keeps the config and the volumes.
	for _, d := range []string{"srv/blockvol/state/volumes", "srv/blockvol/images"} {
		if err := os.MkdirAll(filepath.Join(dest, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	image := filepath.Join(dest, "srv/blockvol/images/data.img")
	if err := os.WriteFile(image, []byte("volume data"), 0o600); err != nil {
		t.Fatal(err)
	}
	out = mustInstall(t, "--destdir", dest, "--uninstall")
	t.Logf("install.sh --uninstall:\n%s", out)
	requireGone(t, binPath, socketUnit, serviceUnit, docDir)
	if got, _ := os.ReadFile(config); string(got) != edited {
		t.Error("--uninstall touched the config")
	}
	if _, err := os.Stat(image); err != nil {
		t.Errorf("--uninstall touched the volumes: %v", err)
	}
	if !strings.Contains(out, "--purge removes them") {
		t.Errorf("--uninstall does not say what it kept:\n%s", out)
	}
	// Uninstalling again is harmless.
	mustInstall(t, "--destdir", dest, "--uninstall")

	// --purge removes the config and every volume directory it names.
	out = mustInstall(t, "--destdir", dest, "--uninstall", "--purge")
	t.Logf("install.sh --uninstall --purge:\n%s", out)
	requireGone(t, filepath.Join(dest, "etc/blockvol"), filepath.Join(dest, "srv/blockvol/state"), filepath.Join(dest, "srv/blockvol/images"))
}

// TestInstallPrefixAndErrors: --prefix moves the binary and the units'
// ExecStart; bad options fail with a sentence.
func TestInstallPrefixAndErrors(t *testing.T) {
	bin := installBinary(t)
	dest := t.TempDir()
	mustInstall(t, "--destdir", dest, "--prefix", "/opt/blockvol", "--binary", bin)
	requireMode(t, filepath.Join(dest, "opt/blockvol/bin/blockvol"), 0o755)
	service, _ := os.ReadFile(filepath.Join(dest, "etc/systemd/system/blockvol.service"))
	if !strings.Contains(string(service), "\nExecStart=/opt/blockvol/bin/blockvol serve --config /etc/blockvol/config.toml\n") {
		t.Errorf("ExecStart does not follow --prefix:\n%s", service)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--destdir", dest, "--frobnicate"}, "unknown option --frobnicate"},
		{[]string{"--destdir", dest, "--prefix", "opt"}, "--prefix must be an absolute path"},
		{[]string{"--destdir", dest, "--purge"}, "--purge goes with --uninstall"},
		{[]string{"--destdir", dest, "--binary", filepath.Join(dest, "none")}, "no such file"},
	} {
		code, out := runInstall(t, tc.args...)
		if code == 0 || !strings.Contains(out, tc.want) {
			t.Errorf("install.sh %s: exit %d, output %q; want failure saying %q", strings.Join(tc.args, " "), code, out, tc.want)
		}
	}
	if sc, err := exec.LookPath("shellcheck"); err == nil {
		if b, err := exec.Command(sc, installScript(t)).CombinedOutput(); err != nil {
			t.Errorf("shellcheck install.sh: %v\n%s", err, b)
		}
	} else {
		t.Log("shellcheck not installed (apt-get install shellcheck); not linting install.sh")
	}
}

// verifyUnits runs systemd-analyze verify on the staged units (pointed at
// the staged binary) when systemd-analyze is installed: it works without a
// running systemd.
func verifyUnits(t *testing.T, dest, binPath string) {
	t.Helper()
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed; units not verified")
		return
	}
	dir := t.TempDir()
	for _, u := range []string{"blockvol.socket", "blockvol.service"} {
		b, err := os.ReadFile(filepath.Join(dest, "etc/systemd/system", u))
		if err != nil {
			t.Fatal(err)
		}
		text := strings.ReplaceAll(string(b), "/usr/local/bin/blockvol", binPath)
		if err := os.WriteFile(filepath.Join(dir, u), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, sa, "verify", "./blockvol.socket", "./blockvol.service")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	var complaints []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "blockvol.s") {
			complaints = append(complaints, l)
		}
	}
	if err != nil || len(complaints) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, strings.Join(complaints, "\n"))
	}
}

// TestInstallForReal runs install.sh on this machine as an operator would
// (it builds the binary with go), then serves a Docker volume through the
// private dockerd with the installed binary, runs the installed doctor,
// and finally uninstalls with --purge. Without systemd (as here) install.sh
// must say how to start blockvol by hand and exit 0. It refuses to run
// over an existing installation.
func TestInstallForReal(t *testing.T) {
	requireDocker(t)
	const (
		bin       = "/usr/local/bin/blockvol"
		configDir = "/etc/blockvol"
		config    = "/etc/blockvol/config.toml"
		unitDir   = "/etc/systemd/system"
		stateDir  = "/var/lib/blockvol"
		docDir    = "/usr/local/share/doc/blockvol"
	)
	// Another test run on this host (a colleague's, say) may be here too:
	// one real installation at a time.
	lock, err := os.OpenFile(filepath.Join(runParent, "blockvol-e2e-install.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lock.Close() }) // after the uninstall below (cleanups run last-in first-out)
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{bin, configDir, stateDir, filepath.Join(unitDir, "blockvol.service"), filepath.Join(unitDir, "blockvol.socket"), docDir} {
		if _, err := os.Lstat(p); err == nil {
			t.Skipf("%s exists: blockvol is installed on this host; not touching it", p)
		}
	}
	systemd := false
	if fi, err := os.Stat("/run/systemd/system"); err == nil && fi.IsDir() {
		systemd = true
	}
	t.Cleanup(func() {
		code, out := runInstall(t, "--uninstall", "--purge")
		t.Logf("install.sh --uninstall --purge:\n%s", out)
		if code != 0 {
			t.Errorf("uninstall: exit %d", code)
		}
		requireGone(t, bin, configDir, stateDir, filepath.Join(unitDir, "blockvol.service"), filepath.Join(unitDir, "blockvol.socket"), docDir)
	})

	out := mustInstall(t)
	t.Logf("install.sh:\n%s", out)
	requireMode(t, bin, 0o755)
	requireMode(t, config, 0o600)
	requireMode(t, filepath.Join(unitDir, "blockvol.socket"), 0o644)
	requireMode(t, filepath.Join(unitDir, "blockvol.service"), 0o644)
	if systemd {
		if !strings.Contains(out, "enabled blockvol.socket and blockvol.service") {
			t.Errorf("with systemd, install.sh did not enable the units:\n%s", out)
		}
	} else if !strings.Contains(out, "systemd is not running on this host") ||
		!strings.Contains(out, bin+" serve --config "+config) {
		t.Errorf("without systemd, install.sh does not say how to start blockvol by hand:\n%s", out)
	}
	if out2 := mustInstall(t); strings.Contains(out2, "\ninstalled  ") {
		t.Errorf("a second real install changed files:\n%s", out2)
	}

	// The installed binary serves a Docker volume (a unique driver name:
	// the plugin outlives the test, like every e2e plugin).
	p := startInstalledPlugin(t, bin)
	vol := createVolume(t, p, uniqueName(t), "size=1", "fstype=ext4")
	got, err := runContainer(t, "--rm", "-v", vol+":/data", env.image, "sh", "-c", "echo served-by-installed-binary > /data/f && cat /data/f")
	if err != nil || got != "served-by-installed-binary\n" {
		t.Fatalf("container: %q (%v)", got, err)
	}
	requireReleased(t, p)
	mustDocker(t, "volume", "rm", vol)

	code, doc, _ := runBlockvol(t, bin, "doctor", "--config", p.ConfigPath)
	t.Logf("installed blockvol doctor:\n%s", doc)
	if code != 0 || !matches(`OK +plugin socket`, doc) {
		t.Errorf("installed doctor: exit %d", code)
	}
}

// startInstalledPlugin starts `bin serve` with an e2e configuration, as
// startPlugin does for the binary built from the tree.
func startInstalledPlugin(t *testing.T, bin string) *Plugin {
	t.Helper()
	env.mu.Lock()
	env.nextID++
	n := env.nextID
	env.mu.Unlock()
	cfg := PluginConfig{Name: fmt.Sprintf("%s%s-installed-%d", runPrefix, env.runID, n), LogLevel: "debug", DefaultSize: "1G", DefaultFS: "ext4"}
	dir := filepath.Join(env.root, "plugins", cfg.Name)
	cfg.StateDir, cfg.DataDir = filepath.Join(dir, "state"), filepath.Join(dir, "loop")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := &Plugin{
		Config:     cfg,
		ConfigPath: filepath.Join(dir, "blockvol.toml"),
		LogPath:    filepath.Join(dir, "blockvol.log"),
		SocketPath: filepath.Join(pluginSocketDir, cfg.Name+".sock"),
	}
	if err := os.WriteFile(p.ConfigPath, []byte(cfg.toml()), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("plugin %s log (%s):\n%s", cfg.Name, p.LogPath, p.Log())
		}
	})
	if err := p.start(bin); err != nil {
		t.Fatal(err)
	}
	env.mu.Lock()
	env.plugins = append(env.plugins, p)
	env.mu.Unlock()
	return p
}
