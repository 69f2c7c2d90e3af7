package config

import (
	"fmt"
	"path/filepath"
)

// LoopConfig configures the embedded loop backend: volumes are sparse
// image files in DataDir, attached with loop devices.
type LoopConfig struct {
	Type    string `toml:"type"`
	DataDir string `toml:"data_dir"` // default <state_dir>/loop
}

func init() { registerBackendType("loop", func() BackendSettings { return &LoopConfig{} }) }

func (l *LoopConfig) fill(c *Config) {
	if l.DataDir == "" {
		l.DataDir = filepath.Join(c.StateDir, "loop")
	}
}

func (l *LoopConfig) validate(key string, c *Config) []error {
	if !filepath.IsAbs(l.DataDir) {
		return []error{fmt.Errorf("%s.data_dir %q must be an absolute path", key, l.DataDir)}
	}
	return nil
}
