package main

import (
	"fmt"
	"log/slog"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/backends/cinder"
	"github.com/blockvol/blockvol/backends/iscsitarget"
	"github.com/blockvol/blockvol/backends/iscsitarget/sshhost"
	"github.com/blockvol/blockvol/config"
	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/iscsi"
)

// Only cmd reads TOML: package config parses and validates the
// [backends.NAME] tables, and these turn a validated table into the typed
// settings each backend package takes.

// cinderSettings is a validated cinder table (filled in from [iscsi] and
// any cinder-docker-driver file) as cinder.Config.
func cinderSettings(k *config.CinderConfig) cinder.Config {
	return cinder.Config{
		AuthURL:                     k.AuthURL,
		Username:                    k.Username,
		UserID:                      k.UserID,
		Password:                    string(k.Password),
		UserDomainName:              k.UserDomainName,
		UserDomainID:                k.UserDomainID,
		ProjectName:                 k.ProjectName,
		ProjectID:                   k.ProjectID,
		ProjectDomainName:           k.ProjectDomainName,
		ProjectDomainID:             k.ProjectDomainID,
		ApplicationCredentialID:     k.ApplicationCredentialID,
		ApplicationCredentialName:   k.ApplicationCredentialName,
		ApplicationCredentialSecret: string(k.ApplicationCredentialSecret),
		Region:                      k.Region,
		Interface:                   k.Interface,
		Endpoint:                    k.Endpoint,
		CAFile:                      k.CAFile,
		RequestTimeout:              k.RequestTimeout.Duration,
		AttachAPI:                   k.AttachAPI,
		Preempt:                     k.Preempt,
		HostName:                    k.HostName,
		HostUUID:                    k.HostUUID,
		HostUUIDFile:                k.HostUUIDFile,
		InitiatorIP:                 k.InitiatorIP,
		Multipath:                   k.Multipath,
		PortalMap:                   k.PortalMap,
		StateDir:                    k.StateDir,
		Zone:                        k.Zone,
	}
}

// newISCSITarget builds an iscsitarget backend from its validated table: a
// LocalHost running programs with run, or an SSH host (whose key and
// known_hosts file are read now, without connecting). ini is this host's
// initiator, shared by the iSCSI backends.
func newISCSITarget(c *config.ISCSITargetConfig, ini backends.Initiator, run hostexec.Runner, log *slog.Logger) (*iscsitarget.Backend, error) {
	var host iscsitarget.Host = iscsitarget.LocalHost{Runner: run}
	if user, addr, ok := c.SSH(); ok {
		h, err := sshhost.New(sshhost.Config{Addr: addr, User: user, KeyFile: c.SSHKey, KnownHostsFile: c.KnownHosts})
		if err != nil {
			return nil, fmt.Errorf("iscsitarget: target host %s: %w", c.Host, err)
		}
		host = h
	}
	cfg := iscsitarget.Config{
		Portal:         c.Portal,
		Portals:        c.Portals,
		IQNPrefix:      c.IQNPrefix,
		Pools:          c.Pools,
		DefaultPool:    c.DefaultPool,
		TGTControlPort: c.TGTControlPort,
		Preempt:        c.Preempt,
		LockTimeout:    c.LockTimeout.Duration,
	}
	if c.CHAPUsername != "" {
		cfg.CHAP = &iscsi.CHAP{Username: c.CHAPUsername, Password: string(c.CHAPPassword)}
	}
	return iscsitarget.New(cfg, host, ini, log)
}
