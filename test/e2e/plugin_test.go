package e2e

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"github.com/blockvol/blockvol/internal/testenv"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// PluginConfig is what startPlugin writes into the plugin's TOML config.
// Zero fields get defaults: a unique name, directories under the run
// directory, size 1G, ext4, log level debug.
type PluginConfig struct {
	Name        string
	Socket      string // "" lets the plugin use /run/docker/plugins/<name>.sock
	StateDir    string
	MountDir    string // "" lets the plugin use <state_dir>/mounts
	DataDir     string // loop backend's sparse images
	LogLevel    string
	DefaultSize string
	DefaultFS   string
	// ReleaseDelay is release_delay ("" leaves the default, 0s).
	ReleaseDelay string
}

// Plugin is a running `blockvol serve`.
type Plugin struct {
	Config     PluginConfig
	ConfigPath string
	LogPath    string
	SocketPath string

	mu   sync.Mutex
	proc *proc
}

var pluginBin struct {
	once sync.Once
	path string
	skip string
	err  error
}

// pluginBinary builds ./cmd/blockvol once per package run (or takes
// $BLOCKVOL_BIN). It skips the test while cmd/blockvol does not exist yet;
// once it exists, a build failure fails the test.
func pluginBinary(t testing.TB) string {
	t.Helper()
	pluginBin.once.Do(func() {
		if p := os.Getenv("BLOCKVOL_BIN"); p != "" {
			pluginBin.path = p
			return
		}
		mod, err := moduleRoot()
		if err != nil {
			pluginBin.err = err
			return
		}
		if err := statSources(mod); err != nil {
			pluginBin.err = err
			return
		}
		if _, err := os.Stat(filepath.Join(mod, "cmd", "blockvol")); err != nil {
			pluginBin.skip = "cmd/blockvol does not exist yet"
			return
		}
		out := filepath.Join(env.root, "bin", "blockvol")
		if err := buildBlockvol(out); err != nil {
			pluginBin.err = err
			return
		}
		pluginBin.path = out
	})
	if pluginBin.skip != "" {
		testenv.Skip(t, pluginBin.skip)
	}
	if pluginBin.err != nil {
		t.Fatal(pluginBin.err)
	}
	return pluginBin.path
}

// buildBlockvol builds ./cmd/blockvol of this module into out.
func buildBlockvol(out string) error {
	mod, err := moduleRoot()
	if err != nil {
		return err
	}
	goBin, err := exec.LookPath("go") // go test puts its GOROOT/bin first on PATH
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", out, "./cmd/blockvol")
	cmd.Dir = mod
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/blockvol: %w\n%s", err, b)
	}
	return nil
}

// statSources stats every Go source of the module. The go command records
// the files a test looks at and reruns a cached test when one changes: this
// ties the cached e2e result to the plugin's sources, not only to ours.
func statSources(mod string) error {
	return filepath.WalkDir(mod, func(path string, de os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if de.IsDir() {
			if name := de.Name(); path != mod && (strings.HasPrefix(name, ".") || name == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(path, ".go") || de.Name() == "go.mod" || de.Name() == "go.sum" {
			_, err = os.Stat(path)
		}
		return err
	})
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the test directory")
		}
		dir = parent
	}
}

// startPlugin writes cfg, starts the plugin and waits until it answers
// /Plugin.Activate. The plugin outlives the test: TestMain stops it after
// dockerd, since dockerd keeps using every plugin it has seen. Its log is
// printed if the test fails.
func startPlugin(t testing.TB, cfg PluginConfig) *Plugin {
	t.Helper()
	bin := pluginBinary(t)

	env.mu.Lock()
	env.nextID++
	n := env.nextID
	env.mu.Unlock()
	if cfg.Name == "" {
		cfg.Name = fmt.Sprintf("%s%s-%d", runPrefix, env.runID, n)
	}
	dir := filepath.Join(env.root, "plugins", cfg.Name)
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Join(dir, "state")
	}
	if cfg.DataDir == "" {
		cfg.DataDir = filepath.Join(dir, "loop")
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "debug"
	}
	if cfg.DefaultSize == "" {
		cfg.DefaultSize = "1G"
	}
	if cfg.DefaultFS == "" {
		cfg.DefaultFS = "ext4"
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := &Plugin{
		Config:     cfg,
		ConfigPath: filepath.Join(dir, "blockvol.toml"),
		LogPath:    filepath.Join(dir, "blockvol.log"),
		SocketPath: cfg.Socket,
	}
	if p.SocketPath == "" {
		p.SocketPath = filepath.Join(pluginSocketDir, cfg.Name+".sock")
	}
	if err := os.WriteFile(p.ConfigPath, []byte(cfg.toml()), 0o644); err != nil {
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

func (c PluginConfig) toml() string {
	q := strconv.Quote
	return fmt.Sprintf(`name = %s
socket = %s
state_dir = %s
mount_dir = %s
log_level = %s
default_backend = "local"
release_delay = %s

[defaults]
size = %s
fstype = %s

[backends.local]
type = "loop"
data_dir = %s
`, q(c.Name), q(c.Socket), q(c.StateDir), q(c.MountDir), q(c.LogLevel), q(cmp.Or(c.ReleaseDelay, "0s")), q(c.DefaultSize), q(c.DefaultFS), q(c.DataDir))
}

// start runs `blockvol serve` and waits until the socket answers Activate.
func (p *Plugin) start(bin string) error {
	pr, err := startProc([]string{bin, "serve", "--config", p.ConfigPath}, p.LogPath, childEnv())
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.proc = pr
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	hc := unixHTTPClient(p.SocketPath)
	err = poll(ctx, 50*time.Millisecond, pr.done, func(ctx context.Context) (bool, error) {
		return httpOK(ctx, hc, http.MethodPost, "http://plugin/Plugin.Activate", "VolumeDriver")
	})
	if err != nil {
		_ = pr.stop(5 * time.Second)
		return fmt.Errorf("plugin %s not ready on %s: %w", p.Config.Name, p.SocketPath, err)
	}
	return nil
}

func (p *Plugin) current() *proc {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.proc
}

// PID of the running plugin process.
func (p *Plugin) PID() int { return p.current().pid() }

// RSSKiB is the plugin's VmRSS.
func (p *Plugin) RSSKiB() (int64, error) { return vmRSSKiB(p.PID()) }

// Kill9 kills the plugin with SIGKILL, as a crash would (its socket file
// stays behind), and waits until it is gone.
func (p *Plugin) Kill9(t testing.TB) {
	t.Helper()
	if err := p.current().kill9(); err != nil {
		t.Fatal(err)
	}
}

// Restart starts the plugin again with the same config (after Kill9 or
// Stop) and waits until it answers.
func (p *Plugin) Restart(t testing.TB) {
	t.Helper()
	if !p.current().exited() {
		t.Fatalf("plugin %s is still running", p.Config.Name)
	}
	if err := p.start(pluginBinary(t)); err != nil {
		t.Fatal(err)
	}
}

// Stop stops the plugin: SIGTERM, 10 s, SIGKILL. It reports a plugin that
// ignored SIGTERM or exited non-zero after it; a plugin already dead (Kill9)
// is not an error. Call it only after the last Docker call that may reach
// the plugin (see the package comment); TestMain stops every plugin anyway.
func (p *Plugin) Stop() error {
	pr := p.current()
	if pr == nil || pr.exited() {
		return nil
	}
	if err := pr.stop(10 * time.Second); err != nil {
		return fmt.Errorf("plugin %s: %w", p.Config.Name, err)
	}
	if pr.waitErr != nil {
		return fmt.Errorf("plugin %s exited after SIGTERM: %v", p.Config.Name, pr.waitErr)
	}
	return nil
}

// removeSocket removes the socket file if nobody listens on it any more.
func (p *Plugin) removeSocket() {
	if !socketListening(p.SocketPath) {
		_ = os.Remove(p.SocketPath)
	}
}

// logSize is the length of the plugin's log.
func (p *Plugin) logSize() int64 { return fileSize(p.LogPath) }

// logSince returns the plugin's log after offset.
func (p *Plugin) logSince(offset int64) string {
	log := p.Log()
	if offset > int64(len(log)) {
		return log
	}
	return log[offset:]
}

// Log returns the plugin's log file.
func (p *Plugin) Log() string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// EffectiveMountDir is mount_dir, or its default under state_dir.
func (p *Plugin) EffectiveMountDir() string {
	if p.Config.MountDir != "" {
		return p.Config.MountDir
	}
	return filepath.Join(p.Config.StateDir, "mounts")
}
