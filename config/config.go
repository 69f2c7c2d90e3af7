// Package config reads blockvol's TOML configuration, fills in defaults and
// validates it, so that a mistake is reported once, at start, in one
// sentence that names the key.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// DefaultPath is where `blockvol serve` looks without --config.
const DefaultPath = "/etc/blockvol/config.toml"

// Config is the whole configuration file.
type Config struct {
	// Name is the driver name Docker knows the plugin by.
	Name string `toml:"name"`
	// Socket is the listening socket; default /run/docker/plugins/<name>.sock.
	Socket string `toml:"socket"`
	// SocketGroup owns the socket (mode 0660); "" leaves it to root.
	SocketGroup string `toml:"socket_group"`
	// StateDir holds crash-safe records of volumes and their users.
	StateDir string `toml:"state_dir"`
	// MountDir is where volumes are mounted; default <state_dir>/mounts.
	MountDir string `toml:"mount_dir"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `toml:"log_level"`
	// DefaultBackend names the backend used when a Create has no
	// `backend` option.
	DefaultBackend string `toml:"default_backend"`

	Defaults Defaults `toml:"defaults"`
	Timeouts Timeouts `toml:"timeouts"`
	// ReleaseDelay keeps a loop volume mounted that long after its last
	// Unmount, so that a Mount right after joins the mount (Docker
	// unmounts a volume after copying an image's files into it and
	// mounts it again at once for the container). "0s", the default,
	// unmounts and detaches at once. At most 5s.
	ReleaseDelay Duration `toml:"release_delay"`
	// ISCSI configures this host's iSCSI initiator, for the backends that
	// attach over iSCSI.
	ISCSI ISCSIConfig `toml:"iscsi"`
	// Backends are decoded per type by Parse (see BackendConfig).
	Backends map[string]BackendConfig `toml:"-"`
	// Metrics configures the Prometheus endpoint, off by default.
	Metrics Metrics `toml:"metrics"`
	// CSI configures the CSI door, off by default.
	CSI CSI `toml:"csi"`
}

// Metrics configures the Prometheus endpoint.
type Metrics struct {
	// Listen is "unix:/absolute/path" or a loopback "host:port" such as
	// "127.0.0.1:9273"; "" turns metrics off. The endpoint has no
	// authentication, so nothing else is accepted.
	Listen string `toml:"listen"`
}

// Defaults apply to a Create that does not give the option.
type Defaults struct {
	Size      string `toml:"size"`
	FSType    string `toml:"fstype"`
	MountOpts string `toml:"mountopts"`
}

// Timeouts bound each plugin call. Docker gives up on Create and Mount
// after 2 minutes and on every other call after 1 minute; ours end
// earlier so that the plugin cleans up before Docker stops waiting.
type Timeouts struct {
	Create Duration `toml:"create"`
	Mount  Duration `toml:"mount"`
	Other  Duration `toml:"other"`
}

// BackendConfig configures one backend: its type, and the settings of that
// type (a *LoopConfig for "loop", and so on; see the backend_*.go files).
type BackendConfig struct {
	Type     string
	Settings BackendSettings
}

// BackendSettings are the type-specific keys of a [backends.NAME] table.
// Each backend type registers a constructor with registerBackendType.
type BackendSettings interface {
	// fill sets defaults that derive from the rest of the configuration.
	fill(c *Config)
	// validate checks the settings; key is "backends.NAME" for messages.
	validate(key string, c *Config) []error
}

// backendTypes maps a type name to a constructor of its empty settings.
var backendTypes = map[string]func() BackendSettings{}

func registerBackendType(name string, newSettings func() BackendSettings) {
	backendTypes[name] = newSettings
}

func knownBackendTypes() []string {
	var names []string
	for n := range backendTypes {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// maxReleaseDelay bounds release_delay: a volume released stays mounted
// no longer than a user could expect Docker's own copy-up to take.
const maxReleaseDelay = 5 * time.Second

// Duration is a time.Duration written as "90s" or "2m" in TOML.
type Duration struct{ time.Duration }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration such as \"90s\" or \"2m\"", b)
	}
	d.Duration = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Docker's own limits on a plugin call.
const (
	dockerCreateMountLimit = 2 * time.Minute
	dockerOtherLimit       = time.Minute
)

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$`)

// Default returns the configuration used for keys a file leaves out.
func Default() Config {
	return Config{
		Name:           "blockvol",
		StateDir:       "/var/lib/blockvol",
		LogLevel:       "info",
		DefaultBackend: "local",
		Defaults:       Defaults{Size: "1G", FSType: "ext4"},
		Timeouts: Timeouts{
			Create: Duration{100 * time.Second},
			Mount:  Duration{100 * time.Second},
			Other:  Duration{50 * time.Second},
		},
	}
}

// Load reads, completes and validates the file at path.
func Load(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	cfg, err := Parse(data)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes TOML text over the defaults, rejects unknown keys, fills in
// derived defaults and validates the result.
func Parse(data []byte) (Config, error) {
	// One decode, so that the metadata knows every key: the backends'
	// tables are kept as primitives and decoded by type below.
	doc := struct {
		Config
		Backends map[string]toml.Primitive `toml:"backends"`
	}{Config: Default()}
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&doc)
	if err != nil {
		return Config{}, err
	}
	cfg, raw := doc.Config, doc
	cfg.Backends = map[string]BackendConfig{}
	for name, prim := range raw.Backends {
		var t struct {
			Type string `toml:"type"`
		}
		if err := md.PrimitiveDecode(prim, &t); err != nil {
			return Config{}, fmt.Errorf("backends.%s: %w", name, err)
		}
		newSettings, ok := backendTypes[t.Type]
		if !ok {
			return Config{}, fmt.Errorf("backends.%s.type %q must be one of %s", name, t.Type, strings.Join(knownBackendTypes(), ", "))
		}
		settings := newSettings()
		if err := md.PrimitiveDecode(prim, settings); err != nil {
			return Config{}, fmt.Errorf("backends.%s: %w", name, err)
		}
		cfg.Backends[name] = BackendConfig{Type: t.Type, Settings: settings}
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		keys := make([]string, len(undecoded))
		for i, k := range undecoded {
			keys[i] = k.String()
		}
		return Config{}, fmt.Errorf("unknown key %s (see config.example.toml for the accepted keys)", strings.Join(keys, ", "))
	}
	if len(cfg.Backends) == 0 {
		cfg.Backends = map[string]BackendConfig{"local": {Type: "loop", Settings: &LoopConfig{Type: "loop"}}}
	}
	cfg.fillDerived()
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

func (c *Config) fillDerived() {
	if c.Socket == "" {
		c.Socket = filepath.Join("/run/docker/plugins", c.Name+".sock")
	}
	if c.MountDir == "" {
		c.MountDir = filepath.Join(c.StateDir, "mounts")
	}
	for _, b := range c.Backends {
		b.Settings.fill(c)
	}
}

// Validate checks every value and the values that depend on each other.
func (c *Config) Validate() error {
	var errs []error
	if !nameRE.MatchString(c.Name) {
		errs = append(errs, fmt.Errorf("name %q must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit", c.Name))
	}
	for key, p := range map[string]string{"socket": c.Socket, "state_dir": c.StateDir, "mount_dir": c.MountDir} {
		if !filepath.IsAbs(p) {
			errs = append(errs, fmt.Errorf("%s %q must be an absolute path", key, p))
		}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log_level %q must be one of debug, info, warn, error", c.LogLevel))
	}
	if _, ok := c.Backends[c.DefaultBackend]; !ok {
		errs = append(errs, fmt.Errorf("default_backend %q is not a configured backend (configured: %s)", c.DefaultBackend, strings.Join(c.BackendNames(), ", ")))
	}
	for _, name := range c.BackendNames() {
		b := c.Backends[name]
		if !nameRE.MatchString(name) {
			errs = append(errs, fmt.Errorf("backend name %q must be letters, digits, '_', '.' or '-'", name))
		}
		errs = append(errs, b.Settings.validate("backends."+name, c)...)
	}
	for key, t := range map[string]struct {
		d     time.Duration
		limit time.Duration
	}{
		"timeouts.create": {c.Timeouts.Create.Duration, dockerCreateMountLimit},
		"timeouts.mount":  {c.Timeouts.Mount.Duration, dockerCreateMountLimit},
		"timeouts.other":  {c.Timeouts.Other.Duration, dockerOtherLimit},
	} {
		if t.d <= 0 || t.d >= t.limit {
			errs = append(errs, fmt.Errorf("%s %s must be positive and below Docker's own limit of %s", key, t.d, t.limit))
		}
	}
	if d := c.ReleaseDelay.Duration; d < 0 || d > maxReleaseDelay {
		errs = append(errs, fmt.Errorf("release_delay %s must be between 0s and %s", d, maxReleaseDelay))
	}
	if err := validateMetricsListen(c.Metrics.Listen); err != nil {
		errs = append(errs, err)
	}
	if c.CSI.Endpoint != "" {
		if _, err := CSISocketPath(c.CSI.Endpoint); err != nil {
			errs = append(errs, err)
		}
	}
	sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
	return errors.Join(errs...)
}

// validateMetricsListen accepts "", a unix socket path or a loopback
// address with a port.
func validateMetricsListen(v string) error {
	if v == "" {
		return nil
	}
	bad := func(why string) error {
		return fmt.Errorf("metrics.listen %q %s; use \"unix:/run/blockvol/metrics.sock\" or a loopback address such as \"127.0.0.1:9273\" (the endpoint has no authentication)", v, why)
	}
	if path, ok := strings.CutPrefix(v, "unix:"); ok {
		if !filepath.IsAbs(path) {
			return bad("must name an absolute socket path")
		}
		return nil
	}
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return bad("is neither unix:PATH nor host:port")
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return bad("needs a port from 1 to 65535")
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return bad("is not a loopback address")
	}
	return nil
}

// BackendNames returns the configured backend names, sorted.
func (c *Config) BackendNames() []string {
	names := make([]string, 0, len(c.Backends))
	for n := range c.Backends {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
