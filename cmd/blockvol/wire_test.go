package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blockvol/blockvol/internal/testenv"
)

// A backend that cannot be built at start (here: its SSH key is missing)
// must not take the plugin down: the socket serves, the other backends
// work, and every call on the broken one says why.
func TestBrokenBackendStillServes(t *testing.T) {
	testenv.RequireRoot(t) // binding the plugin socket chowns it to root
	dir := t.TempDir()
	cfgPath, sock := testConfig(t, dir, `
[backends.target]
type = "iscsitarget"
host = "ssh://blockvol@127.0.0.1:2299"
ssh_key = "`+filepath.Join(dir, "missing-key")+`"
known_hosts = "`+filepath.Join(dir, "missing-known-hosts")+`"
portal = "127.0.0.1:3260"
iqn_prefix = "iqn.2026-11.test.blockvol"
pools = { default = "`+filepath.Join(dir, "pool")+`" }
`)
	c := startBlockvol(t, filepath.Join(dir, "blockvol.log"), nil, nil, "serve", "--config", cfgPath)
	waitAnswer(t, sock, c)
	cl := newPluginClient(sock)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	err := cl.call(ctx, "VolumeDriver.Create", map[string]any{"Name": "v1", "Opts": map[string]string{"backend": "target"}}, nil)
	if err == nil || !strings.Contains(err.Error(), "backend target is unavailable") || !strings.Contains(err.Error(), "missing-key") {
		t.Fatalf("Create on the broken backend = %v; want it to say the backend is unavailable and why", err)
	}
	if err := cl.call(ctx, "VolumeDriver.Create", map[string]any{"Name": "v2", "Opts": map[string]string{"size": "64M"}}, nil); err != nil {
		t.Fatalf("Create on the working loop backend: %v", err)
	}
	var caps struct{ Capabilities struct{ Scope string } }
	if err := cl.call(ctx, "VolumeDriver.Capabilities", struct{}{}, &caps); err != nil || caps.Capabilities.Scope != "global" {
		t.Fatalf("Capabilities = %+v, %v; a shared backend is configured, even if broken", caps, err)
	}
	if err := c.stop(t); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	log, _ := os.ReadFile(filepath.Join(dir, "blockvol.log"))
	if !strings.Contains(string(log), "backend unavailable") {
		t.Fatalf("the log does not say the backend is unavailable:\n%s", log)
	}
}
