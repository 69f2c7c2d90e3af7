package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/blockvol/blockvol/config"
)

// The paths a Docker managed (v2) plugin runs with, fixed by
// docker-plugin/config.json: Docker connects to interface.socket inside
// the plugin's /run/docker/plugins, the "state" mount brings the host's
// state directory in (records and the loop backend's images, so nothing
// is lost when the plugin is removed and installed again), and volumes are
// mounted under propagatedMount, which Docker shares with the host.
const (
	managedSocket   = "/run/docker/plugins/blockvol.sock"
	managedStateDir = "/var/lib/blockvol"
	managedMountDir = "/mnt/blockvol"
)

// managedEnv are the plugin's settings (`docker plugin set <plugin> KEY=value`)
// that stand for configuration keys, for a plugin run without a file.
var managedEnv = []struct{ env, key string }{
	{"LOG_LEVEL", "log_level"},
	{"DEFAULT_SIZE", "defaults.size"},
	{"DEFAULT_FSTYPE", "defaults.fstype"},
	{"DEFAULT_MOUNTOPTS", "defaults.mountopts"},
}

// managedConfig builds the configuration of `blockvol serve --managed` from
// the plugin's settings: CONFIG names a TOML file inside the plugin (the
// host's state directory is mounted at /var/lib/blockvol, so
// CONFIG=/var/lib/blockvol/config.toml is a file there), or the common keys
// of managedEnv are given; not both. Either way socket, state_dir and
// mount_dir are those of config.json: a file that sets them is refused.
func managedConfig(getenv func(string) string) (config.Config, error) {
	var set []string
	for _, e := range managedEnv {
		if getenv(e.env) != "" {
			set = append(set, e.env)
		}
	}
	path := getenv("CONFIG")
	if path == "" {
		return config.Parse([]byte(managedFixed() + managedKeys(getenv)))
	}
	if len(set) > 0 {
		return config.Config{}, fmt.Errorf("plugin settings CONFIG and %s are both set: set either the configuration file or the keys (docker plugin set <plugin> %s=)",
			strings.Join(set, ", "), set[0])
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return config.Config{}, fmt.Errorf("plugin setting CONFIG: %w", err)
	}
	var top map[string]any
	if _, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&top); err != nil {
		return config.Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	var fixed []string
	for _, k := range []string{"socket", "state_dir", "mount_dir"} {
		if _, ok := top[k]; ok {
			fixed = append(fixed, k)
		}
	}
	if len(fixed) > 0 {
		return config.Config{}, fmt.Errorf("config %s: %s cannot be set in a managed plugin (config.json fixes them; change the host directory with `docker plugin set <plugin> state.source=DIR`)",
			path, strings.Join(fixed, ", "))
	}
	// Top-level keys must come before the first table: put ours first.
	cfg, err := config.Parse(append([]byte(managedFixed()), data...))
	if err != nil {
		return config.Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

func managedFixed() string {
	return "socket = " + strconv.Quote(managedSocket) + "\n" +
		"state_dir = " + strconv.Quote(managedStateDir) + "\n" +
		"mount_dir = " + strconv.Quote(managedMountDir) + "\n"
}

// managedKeys renders the common keys given as settings as TOML.
func managedKeys(getenv func(string) string) string {
	var top, defaults strings.Builder
	for _, e := range managedEnv {
		v := getenv(e.env)
		if v == "" {
			continue
		}
		if k, ok := strings.CutPrefix(e.key, "defaults."); ok {
			fmt.Fprintf(&defaults, "%s = %s\n", k, strconv.Quote(v))
		} else {
			fmt.Fprintf(&top, "%s = %s\n", e.key, strconv.Quote(v))
		}
	}
	if defaults.Len() > 0 {
		return top.String() + "[defaults]\n" + defaults.String()
	}
	return top.String()
}

// errManagedWithConfig: --managed takes its configuration from the plugin's
// settings only.
var errManagedWithConfig = errors.New("serve: --managed and --config exclude each other (a managed plugin's file is its CONFIG setting)")
