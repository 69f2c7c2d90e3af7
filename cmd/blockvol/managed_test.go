package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestManagedConfig: the plugin's settings give either a file or the common
// keys; socket, state_dir and mount_dir are always config.json's.
func TestManagedConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	fixed := filepath.Join(dir, "fixed.toml")
	if err := os.WriteFile(good, []byte("log_level = \"debug\"\n[defaults]\nsize = \"3G\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fixed, []byte("state_dir = \"/srv/x\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		env       map[string]string
		size, fs  string
		level     string
		errSubstr string
	}{
		{name: "defaults", env: nil, size: "1G", fs: "ext4", level: "info"},
		{name: "keys", env: map[string]string{"DEFAULT_SIZE": "5G", "DEFAULT_FSTYPE": "xfs", "LOG_LEVEL": "warn"}, size: "5G", fs: "xfs", level: "warn"},
		{name: "file", env: map[string]string{"CONFIG": good}, size: "3G", fs: "ext4", level: "debug"},
		{name: "file and keys", env: map[string]string{"CONFIG": good, "DEFAULT_SIZE": "5G"}, errSubstr: "CONFIG and DEFAULT_SIZE are both set"},
		{name: "file sets a fixed path", env: map[string]string{"CONFIG": fixed}, errSubstr: "state_dir cannot be set in a managed plugin"},
		{name: "missing file", env: map[string]string{"CONFIG": filepath.Join(dir, "none.toml")}, errSubstr: "plugin setting CONFIG: open"},
		{name: "bad key value", env: map[string]string{"LOG_LEVEL": "loud"}, errSubstr: `log_level "loud"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := managedConfig(func(k string) string { return tc.env[k] })
			if tc.errSubstr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errSubstr) {
					t.Fatalf("err %v; want one containing %q", err, tc.errSubstr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Socket != managedSocket || cfg.StateDir != managedStateDir || cfg.MountDir != managedMountDir {
				t.Errorf("paths %s %s %s; want config.json's", cfg.Socket, cfg.StateDir, cfg.MountDir)
			}
			if cfg.Defaults.Size != tc.size || cfg.Defaults.FSType != tc.fs || cfg.LogLevel != tc.level {
				t.Errorf("size %s fstype %s log_level %s; want %s %s %s", cfg.Defaults.Size, cfg.Defaults.FSType, cfg.LogLevel, tc.size, tc.fs, tc.level)
			}
		})
	}
}
