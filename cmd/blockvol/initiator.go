package main

import (
	"fmt"
	"log/slog"

	"github.com/blockvol/blockvol/config"
	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/iscsi"
)

// newInitiator builds this host's iSCSI initiator from the [iscsi] table,
// for the backends that attach over iSCSI. Build one and share it: it
// serializes logins and logouts per target.
func newInitiator(cfg config.Config, run hostexec.Runner, log *slog.Logger) (*iscsi.Initiator, error) {
	ini, err := iscsi.New(iscsi.Config{
		InitiatorName:     cfg.ISCSI.InitiatorName,
		InitiatorNameFile: cfg.ISCSI.InitiatorNameFile,
		Iface:             cfg.ISCSI.Iface,
		LoginTimeout:      cfg.ISCSI.LoginTimeout.Duration,
		DeviceTimeout:     cfg.ISCSI.DeviceTimeout.Duration,
		LogoutTimeout:     cfg.ISCSI.LogoutTimeout.Duration,

		ReplacementTimeout: cfg.ISCSI.ReplacementTimeout.Duration,
		PortalLoginTimeout: cfg.ISCSI.PortalLoginTimeout.Duration,
	}, run, log.With("component", "iscsi"))
	if err != nil {
		return nil, fmt.Errorf("iSCSI initiator: %w", err)
	}
	return ini, nil
}
