package iscsitarget

import (
	"fmt"
	"log/slog"

	"github.com/blockvol/blockvol/backends/iscsitarget/sshhost"
	"github.com/blockvol/blockvol/config"
	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/iscsi"
)

// NewFromConfig builds a Backend from its validated [backends.NAME] table:
// a LocalHost running programs with run, or an SSH host (whose key and
// known_hosts file are read now, without connecting). ini is this host's
// initiator, shared by the iSCSI backends.
func NewFromConfig(c *config.ISCSITargetConfig, ini Initiator, run hostexec.Runner, log *slog.Logger) (*Backend, error) {
	var host Host = LocalHost{Runner: run}
	if user, addr, ok := c.SSH(); ok {
		h, err := sshhost.New(sshhost.Config{Addr: addr, User: user, KeyFile: c.SSHKey, KnownHostsFile: c.KnownHosts})
		if err != nil {
			return nil, fmt.Errorf("iscsitarget: target host %s: %w", c.Host, err)
		}
		host = h
	}
	cfg := Config{
		Portal:         c.Portal,
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
	return New(cfg, host, ini, log)
}
