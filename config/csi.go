package config

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/blockvol/blockvol/internal/quote"
)

// CSI configures the Container Storage Interface door ([csi] table), off
// by default.
type CSI struct {
	// Endpoint is where CSI is served: "unix:///absolute/path.sock" ("" =
	// off). `blockvol serve --csi-endpoint` overrides it.
	Endpoint string `toml:"endpoint"`
	// DriverName is the CSI plugin name (GetPluginInfo); default
	// "blockvol.csi".
	DriverName string `toml:"driver_name"`
}

// CSISocketPath reads a CSI endpoint, unix:///absolute/path (or
// unix:/absolute/path), and returns the socket path. Only unix sockets are
// served: CSI has no authentication.
func CSISocketPath(endpoint string) (string, error) {
	p, ok := strings.CutPrefix(endpoint, "unix://")
	if !ok {
		p, ok = strings.CutPrefix(endpoint, "unix:")
	}
	if !ok || !filepath.IsAbs(p) || strings.ContainsAny(p, "\x00\n") {
		return "", fmt.Errorf("csi.endpoint %s must be unix:///absolute/path.sock", quote.Short(endpoint))
	}
	return filepath.Clean(p), nil
}

// HostUUIDFile is where this host's UUID is kept when [iscsi] host_uuid is
// unset (the CSI node id; the cinder backend's default too).
func (c *Config) HostUUIDFile() string { return filepath.Join(c.StateDir, "host-uuid") }
