package main

import (
	"fmt"
	"log/slog"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/backends/cinder"
	"github.com/blockvol/blockvol/backends/iscsitarget"
	"github.com/blockvol/blockvol/backends/loop"
	"github.com/blockvol/blockvol/config"
	"github.com/blockvol/blockvol/fs"
	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/iscsi"
	"github.com/blockvol/blockvol/plugin"
)

// newBackends builds every configured backend.
func newBackends(cfg config.Config, run hostexec.Runner, log *slog.Logger) (map[string]backends.Backend, error) {
	bes := map[string]backends.Backend{}
	var ini *iscsi.Initiator // this host's initiator, shared by the iSCSI backends
	for _, name := range cfg.BackendNames() {
		bc := cfg.Backends[name]
		switch bc.Type {
		case "loop":
			b, err := loop.New(loop.Config{DataDir: bc.Settings.(*config.LoopConfig).DataDir}, run, log.With("backend", name))
			if err != nil {
				return nil, fmt.Errorf("backend %s: %w", name, err)
			}
			bes[name] = b
		case "iscsitarget":
			if ini == nil {
				var err error
				if ini, err = newInitiator(cfg, run, log); err != nil {
					return nil, fmt.Errorf("backend %s: %w", name, err)
				}
			}
			b, err := iscsitarget.NewFromConfig(bc.Settings.(*config.ISCSITargetConfig), ini, run, log.With("backend", name))
			if err != nil {
				return nil, fmt.Errorf("backend %s: %w", name, err)
			}
			bes[name] = b
		case "cinder":
			if ini == nil {
				var err error
				if ini, err = newInitiator(cfg, run, log); err != nil {
					return nil, fmt.Errorf("backend %s: %w", name, err)
				}
			}
			b, err := cinder.NewFromConfig(bc.Settings.(*config.CinderConfig), ini, log.With("backend", name))
			if err != nil {
				return nil, fmt.Errorf("backend %s: %w", name, err)
			}
			bes[name] = b
		default:
			return nil, fmt.Errorf("backend %s: unknown type %q", name, bc.Type)
		}
	}
	return bes, nil
}

// newDriver wires the plugin: backends, filesystems, state.
func newDriver(cfg config.Config, log *slog.Logger, obs plugin.Observer) (*plugin.Driver, error) {
	run := hostexec.OS{}
	bes, err := newBackends(cfg, run, log)
	if err != nil {
		return nil, err
	}
	filesystems := &fs.FS{Run: run, Mounter: fs.SyscallMounter{}, Log: log}
	return plugin.New(plugin.Config{
		Backends:       bes,
		FS:             filesystems,
		ParseMountOpts: fs.ParseMountOptions,
		StateDir:       cfg.StateDir,
		MountDir:       cfg.MountDir,
		Defaults: plugin.OptionDefaults{
			Size:      cfg.Defaults.Size,
			FSType:    cfg.Defaults.FSType,
			MountOpts: cfg.Defaults.MountOpts,
			Backend:   cfg.DefaultBackend,
		},
		CreateTimeout: cfg.Timeouts.Create.Duration,
		MountTimeout:  cfg.Timeouts.Mount.Duration,
		OtherTimeout:  cfg.Timeouts.Other.Duration,
		Log:           log,
		Observer:      obs,
	})
}
