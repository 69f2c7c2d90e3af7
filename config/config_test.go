package config

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestExampleConfigIsValidAndDefault(t *testing.T) {
	cfg, err := Load(filepath.Join("..", "config.example.toml"))
	if err != nil {
		t.Fatal(err)
	}
	def, err := Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Socket != "/run/docker/plugins/blockvol.sock" || cfg.MountDir != "/var/lib/blockvol/mounts" ||
		cfg.Backends["local"].Settings.(*LoopConfig).DataDir != "/var/lib/blockvol/loop" || cfg.Timeouts.Mount.Duration != 100*time.Second {
		t.Fatalf("example config = %+v", cfg)
	}
	if cfg.Socket != def.Socket || *cfg.Backends["local"].Settings.(*LoopConfig) != *def.Backends["local"].Settings.(*LoopConfig) || cfg.Defaults != def.Defaults {
		t.Fatalf("the example's values differ from the built-in defaults:\n%+v\n%+v", cfg, def)
	}
}

func TestParseDerivedPaths(t *testing.T) {
	cfg, err := Parse([]byte(`
name = "cinder"
state_dir = "/srv/bv"
[backends.fast]
type = "loop"
data_dir = "/data/images"
[backends.slow]
type = "loop"
`))
	if err == nil {
		t.Fatal("default_backend local accepted though only fast and slow are configured")
	}
	if !strings.Contains(err.Error(), `default_backend "local" is not a configured backend (configured: fast, slow)`) {
		t.Fatalf("error %q", err)
	}
	cfg, err = Parse([]byte(`
name = "cinder"
state_dir = "/srv/bv"
default_backend = "fast"
[backends.fast]
type = "loop"
data_dir = "/data/images"
[backends.slow]
type = "loop"
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Socket != "/run/docker/plugins/cinder.sock" || cfg.MountDir != "/srv/bv/mounts" ||
		cfg.Backends["fast"].Settings.(*LoopConfig).DataDir != "/data/images" || cfg.Backends["slow"].Settings.(*LoopConfig).DataDir != "/srv/bv/loop" {
		t.Fatalf("derived paths wrong: %+v", cfg)
	}
}

func TestParseErrorsNameTheKey(t *testing.T) {
	for _, tc := range []struct{ toml, want string }{
		{`nmae = "x"`, "unknown key nmae"},
		{"[defaults]\nsise = \"1G\"", "unknown key defaults.sise"},
		{`name = "a/b"`, `name "a/b" must be`},
		{`state_dir = "relative"`, `state_dir "relative" must be an absolute path`},
		{`log_level = "loud"`, `log_level "loud" must be one of debug, info, warn, error`},
		{"[timeouts]\nmount = \"3m\"", "timeouts.mount 3m0s must be positive and below Docker's own limit of 2m0s"},
		{"[timeouts]\nother = \"soon\"", `"soon" is not a duration`},
		{`release_delay = "10s"`, "release_delay 10s must be between 0s and 5s"},
		{`release_delay = "-1s"`, "release_delay -1s must be between 0s and 5s"},
		{"[backends.local]\ntype = \"ceph\"", `backends.local.type "ceph" must be one of cinder, iscsitarget, loop`},
		{"name = ", "expected value"},
	} {
		_, err := Parse([]byte(tc.toml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v; want an error containing %q", tc.toml, err, tc.want)
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "none.toml"))
	if err == nil || !os.IsNotExist(unwrapAll(err)) {
		t.Fatalf("Load of a missing file = %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

func TestMetricsListen(t *testing.T) {
	for _, ok := range []string{"", "unix:/run/blockvol/metrics.sock", "127.0.0.1:9273", "127.0.0.53:80", "[::1]:9273", "localhost:9273"} {
		cfg, err := Parse([]byte("[metrics]\nlisten = " + strconv.Quote(ok)))
		if err != nil {
			t.Errorf("metrics.listen %q rejected: %v", ok, err)
		} else if cfg.Metrics.Listen != ok {
			t.Errorf("metrics.listen %q read as %q", ok, cfg.Metrics.Listen)
		}
	}
	for _, tc := range []struct{ listen, want string }{
		{"0.0.0.0:9273", "is not a loopback address"},
		{":9273", "is not a loopback address"},
		{"10.0.0.1:9273", "is not a loopback address"},
		{"metrics.example.com:9273", "is not a loopback address"},
		{"127.0.0.1", "is neither unix:PATH nor host:port"},
		{"127.0.0.1:http", "needs a port from 1 to 65535"},
		{"127.0.0.1:0", "needs a port from 1 to 65535"},
		{"unix:metrics.sock", "must name an absolute socket path"},
	} {
		_, err := Parse([]byte("[metrics]\nlisten = " + strconv.Quote(tc.listen)))
		if err == nil || !strings.Contains(err.Error(), `metrics.listen "`+tc.listen+`" `+tc.want) {
			t.Errorf("metrics.listen %q: error %v; want one naming the key and %q", tc.listen, err, tc.want)
		}
	}
}
