package main

import (
	"fmt"
	"log/slog"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/backends/cinder"
	"github.com/blockvol/blockvol/backends/loop"
	"github.com/blockvol/blockvol/config"
	"github.com/blockvol/blockvol/fs"
	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/iscsi"
	"github.com/blockvol/blockvol/volumes"
)

// newBackends builds every configured backend. A backend that cannot be
// built (a missing SSH key, an unreadable data directory) is logged and
// replaced by a stand-in that answers every call with the reason, so that
// the plugin still serves its socket and Docker does not disable it.
func newBackends(cfg config.Config, run hostexec.Runner, log *slog.Logger) map[string]backends.Backend {
	var ini *iscsi.Initiator // this host's initiator, shared by the iSCSI backends
	initiator := func() (*iscsi.Initiator, error) {
		if ini != nil {
			return ini, nil
		}
		var err error
		ini, err = newInitiator(cfg, run, log)
		return ini, err
	}
	bes := map[string]backends.Backend{}
	for _, name := range cfg.BackendNames() {
		bc := cfg.Backends[name]
		blog := log.With("backend", name)
		b, scope, err := newBackend(bc, run, initiator, blog)
		if err != nil {
			blog.Error("backend unavailable; its volumes fail with this reason until the plugin is restarted with it fixed", "type", bc.Type, "err", err)
			b = backends.Unavailable(name, scope, err)
		}
		bes[name] = b
	}
	return bes
}

// newBackend builds one backend. Its scope is returned even on failure,
// for the stand-in.
func newBackend(bc config.BackendConfig, run hostexec.Runner, initiator func() (*iscsi.Initiator, error), log *slog.Logger) (backends.Backend, string, error) {
	switch s := bc.Settings.(type) {
	case *config.LoopConfig:
		b, err := loop.New(loop.Config{DataDir: s.DataDir}, run, log)
		return b, backends.ScopeLocal, err
	case *config.ISCSITargetConfig:
		ini, err := initiator()
		if err != nil {
			return nil, backends.ScopeGlobal, err
		}
		b, err := newISCSITarget(s, ini, run, log)
		return b, backends.ScopeGlobal, err
	case *config.CinderConfig:
		ini, err := initiator()
		if err != nil {
			return nil, backends.ScopeGlobal, err
		}
		b, err := cinder.New(cinderSettings(s), ini, log)
		return b, backends.ScopeGlobal, err
	default:
		return nil, backends.ScopeLocal, fmt.Errorf("unknown backend type %q", bc.Type)
	}
}

// newCore wires the protocol-free core: backends, filesystems, state. The
// front doors (the Docker plugin, CSI) are built on it.
func newCore(cfg config.Config, log *slog.Logger, obs volumes.Observer) (*volumes.Core, error) {
	run := hostexec.OS{}
	bes := newBackends(cfg, run, log)
	filesystems := &fs.FS{Run: run, Mounter: fs.SyscallMounter{}, Log: log}
	return volumes.New(volumes.Config{
		Backends:       bes,
		FS:             filesystems,
		ParseMountOpts: fs.ParseMountOptions,
		StateDir:       cfg.StateDir,
		MountDir:       cfg.MountDir,
		Defaults: volumes.OptionDefaults{
			Size:      cfg.Defaults.Size,
			FSType:    cfg.Defaults.FSType,
			MountOpts: cfg.Defaults.MountOpts,
			Backend:   cfg.DefaultBackend,
		},
		CreateTimeout: cfg.Timeouts.Create.Duration,
		MountTimeout:  cfg.Timeouts.Mount.Duration,
		OtherTimeout:  cfg.Timeouts.Other.Duration,
		ReleaseDelay:  cfg.ReleaseDelay.Duration,
		Log:           log,
		Observer:      obs,
	})
}
