package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// pluginSocket is where every scenario's plugin listens (one at a time).
const pluginSocket = "/run/blockvol-test.sock"

// plugin is a running `blockvol serve` of one scenario.
type plugin struct {
	s                  *S
	dir                string // /srv/<scenario>
	cfgPath, logPath   string
	stateDir, mountDir string
	starts             int

	cmd    *exec.Cmd
	exited chan struct{}
	exit   error
	hc     *http.Client
}

// pluginConfig returns the TOML of a scenario's plugin: its own state
// directory, debug logs, and the given backend tables.
func pluginConfig(dir, defaultBackend, backendTables string) string {
	return fmt.Sprintf(`name = "blockvol"
socket = %q
state_dir = %q
log_level = "debug"
default_backend = %q

[defaults]
size = "512M"
fstype = "ext4"

%s
`, pluginSocket, filepath.Join(dir, "state"), defaultBackend, backendTables)
}

// startPlugin writes the configuration and starts the plugin; it returns
// once the plugin answers /Plugin.Activate. The plugin is stopped when the
// scenario ends, and its log printed if the scenario fails.
func startPlugin(s *S, config string) (*plugin, error) {
	dir := filepath.Join("/srv", s.name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	p := &plugin{
		s: s, dir: dir,
		cfgPath:  filepath.Join(dir, "config.toml"),
		logPath:  filepath.Join("/run/vmtest", s.name+".plugin.log"),
		stateDir: filepath.Join(dir, "state"),
		mountDir: filepath.Join(dir, "state", "mounts"),
	}
	p.hc = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", pluginSocket)
		},
		DisableKeepAlives: true,
	}}
	if err := os.WriteFile(p.cfgPath, []byte(config), 0o600); err != nil {
		return nil, err
	}
	s.OnFailure(func() { s.r.detail("plugin log "+p.logPath+" (last 60 lines)", tail(p.logPath, 60)) })
	s.Cleanup(func() { p.stop() })
	return p, p.start()
}

func (p *plugin) start() error {
	p.starts++
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	fmt.Fprintf(f, "==== vmtest: start %d\n", p.starts)
	cmd := exec.Command("/usr/bin/blockvol", "serve", "--config", p.cfgPath)
	cmd.Env = []string{"PATH=" + hookDir + ":/usr/sbin:/usr/bin"}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		return err
	}
	p.cmd = cmd
	p.exited = make(chan struct{})
	go func() {
		p.exit = cmd.Wait()
		close(p.exited)
	}()
	err = waitFor(p.s.ctx, 30*time.Second, 20*time.Millisecond, "plugin answers /Plugin.Activate", func() (bool, error) {
		select {
		case <-p.exited:
			return false, fmt.Errorf("plugin exited (%v): %s", p.exit, tail(p.logPath, 5))
		default:
		}
		var resp struct{ Implements []string }
		err := p.call(p.s.ctx, "/Plugin.Activate", struct{}{}, &resp)
		return err == nil && len(resp.Implements) > 0, nil
	})
	return err
}

// running reports whether the plugin process is alive.
func (p *plugin) running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// waitExit waits for the plugin to die (a kill hook fired).
func (p *plugin) waitExit(timeout time.Duration) error {
	select {
	case <-p.exited:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("plugin still running after %s", timeout)
	}
}

// kill9 kills the plugin with SIGKILL.
func (p *plugin) kill9() error {
	if !p.running() {
		return nil
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	return p.waitExit(10 * time.Second)
}

// restart starts the plugin again after it died.
func (p *plugin) restart() error {
	if p.running() {
		return errors.New("plugin is still running")
	}
	return p.start()
}

// stop ends the plugin with SIGTERM, as an init system does.
func (p *plugin) stop() error {
	if !p.running() {
		return nil
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.waitExit(60 * time.Second); err != nil {
		p.kill9()
		return err
	}
	if p.exit != nil {
		return fmt.Errorf("plugin exited after SIGTERM: %v", p.exit)
	}
	return nil
}

// pluginError is an {"Err": ...} answer.
type pluginError struct{ msg string }

func (e *pluginError) Error() string { return e.msg }

// call posts one VolumeDriver request and decodes the answer into resp.
func (p *plugin) call(ctx context.Context, endpoint string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://plugin"+endpoint, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hreq.Header.Set("Content-Type", "application/vnd.docker.plugins.v1.2+json")
	hres, err := p.hc.Do(hreq)
	if err != nil {
		return err
	}
	defer hres.Body.Close()
	data, err := io.ReadAll(hres.Body)
	if err != nil {
		return err
	}
	var e struct{ Err string }
	if json.Unmarshal(data, &e) == nil && e.Err != "" {
		return &pluginError{e.Err}
	}
	if hres.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: HTTP %d: %s", endpoint, hres.StatusCode, strings.TrimSpace(string(data)))
	}
	if resp != nil {
		if err := json.Unmarshal(data, resp); err != nil {
			return fmt.Errorf("%s: decode %q: %w", endpoint, data, err)
		}
	}
	return nil
}

// volume is the answer of /VolumeDriver.Get.
type volume struct {
	Name       string
	Mountpoint string
	Status     map[string]any
}

func (v volume) status(key string) string {
	if x, ok := v.Status[key]; ok && x != nil {
		return fmt.Sprint(x)
	}
	return ""
}

func (p *plugin) create(name string, opts map[string]string) error {
	return p.call(p.s.ctx, "/VolumeDriver.Create", map[string]any{"Name": name, "Opts": opts}, nil)
}

func (p *plugin) mount(name, id string) (string, error) {
	var r struct{ Mountpoint string }
	if err := p.call(p.s.ctx, "/VolumeDriver.Mount", map[string]string{"Name": name, "ID": id}, &r); err != nil {
		return "", err
	}
	if r.Mountpoint == "" {
		return "", errors.New("Mount answered no mountpoint")
	}
	return r.Mountpoint, nil
}

func (p *plugin) unmount(name, id string) error {
	return p.call(p.s.ctx, "/VolumeDriver.Unmount", map[string]string{"Name": name, "ID": id}, nil)
}

func (p *plugin) get(name string) (volume, error) {
	var r struct{ Volume *volume }
	if err := p.call(p.s.ctx, "/VolumeDriver.Get", map[string]string{"Name": name}, &r); err != nil {
		return volume{}, err
	}
	if r.Volume == nil {
		return volume{}, errors.New("Get answered no volume")
	}
	return *r.Volume, nil
}

func (p *plugin) remove(name string) error {
	return p.call(p.s.ctx, "/VolumeDriver.Remove", map[string]string{"Name": name}, nil)
}

// recordPath is where the plugin keeps the crash-safe record of a volume
// in use.
func (p *plugin) recordPath(vol string) string {
	return filepath.Join(p.stateDir, "volumes", vol+".json")
}

// recordPhase returns the phase of the volume's record, "" without one.
func (p *plugin) recordPhase(vol string) string {
	b, err := os.ReadFile(p.recordPath(vol))
	if err != nil {
		return ""
	}
	var r struct{ Phase string }
	json.Unmarshal(b, &r)
	if r.Phase == "" {
		return "?"
	}
	return r.Phase
}

// mountID is a Docker-style mount ID.
func mountID(n int) string { return fmt.Sprintf("%064x", n+0xb10c) }
