// Package iscsi is the iSCSI initiator side of blockvol: it logs this host
// in to an iSCSI target with open-iscsi's iscsiadm, finds the block device
// of one LUN in sysfs, and logs out again when no other LUN of the target is
// still in use.
//
// Every iscsiadm call goes through a hostexec.Runner, with its own timeout
// taken from Config. Nothing remembers a device name across calls: after
// every login the device is looked up in sysfs, on a ticker (PollInterval)
// bounded by DeviceTimeout and the caller's context — never a fixed sleep.
//
// CHAP secrets are passed to iscsiadm on its command line (that is the only
// way iscsiadm accepts them), but they never appear in a log line or in an
// error: errors built from an iscsiadm failure carry a redacted argv.
package iscsi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/internal/keyedlock"
	"github.com/blockvol/blockvol/internal/sentinel"
)

// CHAP holds CHAP credentials. The passwords are secrets: they are never
// logged and never part of an error string.
type CHAP struct {
	Username, Password string
	// MutualUsername and MutualPassword, when set, make the initiator
	// authenticate the target too (node.session.auth.username_in and
	// password_in).
	MutualUsername, MutualPassword string
}

// Target identifies one LUN of an iSCSI target and how to reach it.
type Target struct {
	// IQN is the target name.
	IQN string
	// Portals are "ip:port" (port 3260 when omitted; IPv6 as
	// "[addr]:port"). Host names are not accepted: sysfs reports sessions
	// by address, and the session must be matched to its portal.
	Portals []string
	// LUN is the logical unit number, as the kernel reports it in the
	// H:C:T:L name of the SCSI device.
	LUN int
	// CHAP is the session CHAP, given only when the target asks for it.
	// nil leaves the node record's authentication as open-iscsi's defaults
	// set it (normally none): CHAP is never forced on a target.
	CHAP *CHAP
	// DiscoveryCHAP, optional, authenticates sendtargets discovery.
	DiscoveryCHAP *CHAP
	// Discovery runs sendtargets discovery on each portal first; otherwise
	// the node record is created explicitly (iscsiadm -o new).
	Discovery bool
}

// Config configures an Initiator. The zero value is usable.
type Config struct {
	// InitiatorName is this host's iSCSI name. "" reads it from
	// InitiatorNameFile. It must be the name iscsid uses (the one in that
	// file, or the iface's iface.initiatorname): iscsiadm takes no initiator
	// name on its command line.
	InitiatorName string
	// InitiatorNameFile defaults to /etc/iscsi/initiatorname.iscsi.
	InitiatorNameFile string
	// Iface binds discovery and logins to an iscsiadm iface ("" = open-iscsi's
	// default iface). It is passed as -I to every iscsiadm call.
	Iface string

	// LoginTimeout bounds each attach-side iscsiadm call (discovery, node
	// record creation and update, login, rescan). Default 30s. Note that
	// iscsid itself retries a login node.session.initial_login_retry_max
	// times; when LoginTimeout kills iscsiadm first, Attach logs the portal
	// out again so that iscsid does not finish the login unattended.
	LoginTimeout time.Duration
	// DeviceTimeout bounds the wait for the LUN's block device after the
	// logins. Default 30s.
	DeviceTimeout time.Duration
	// LogoutTimeout bounds each detach-side iscsiadm call (logout, node
	// record deletion). Default 30s.
	LogoutTimeout time.Duration
	// PollInterval is the sysfs polling period while waiting for a device.
	// Default 100ms.
	PollInterval time.Duration

	// ReplacementTimeout is how long a session whose connection broke
	// tries to reconnect before the kernel fails the I/O queued on it, and
	// every new I/O, with errors (open-iscsi's
	// node.session.timeo.replacement_timeout). Until then, I/O to the
	// LUN blocks: no error, no progress. Attach writes it to each node
	// record before logging in, and to the sysfs recovery_tmo of a
	// session that already exists. Whole seconds; default 15s (iscsid.conf
	// gives 120s). Past it a filesystem on the LUN sees I/O errors: ext4
	// aborts its journal and remounts read-only (errors=remount-ro) or
	// stops writing; xfs shuts down.
	ReplacementTimeout time.Duration
	// PortalLoginTimeout bounds the login to one portal, so that a portal
	// that does not answer costs seconds, not iscsid.conf's 8 attempts of
	// 15s: iscsid makes one attempt (node.session.initial_login_retry_max
	// 0), bounded by it (node.conn[0].timeo.login_timeout); a refused or
	// unreachable portal fails sooner. Whole seconds; default 5s.
	// LoginTimeout still bounds the iscsiadm call. A failed portal is
	// retried at the next Attach, not within this one.
	PortalLoginTimeout time.Duration

	// SysRoot, DevRoot and MountInfoPath default to /sys, /dev and
	// /proc/self/mountinfo; tests point them at temporary trees.
	SysRoot, DevRoot, MountInfoPath string

	// MultipathActive reports whether multipathd runs on this host; Attach
	// asks only when more than one portal logged in. nil runs
	// `multipathd show daemon` through the Runner and answers true when it
	// exits 0 printing "pid <n> <state>" (the CLI talks to the daemon's
	// socket, so this works wherever multipathd can be reached).
	MultipathActive func(ctx context.Context) bool

	// TargetInUse, optional, lets the caller veto a logout: Detach calls it
	// before logging out of a target and keeps the sessions when it returns
	// true. It should report whether the caller has any LUN of iqn other
	// than exceptLUN attached or being attached — sysfs and mountinfo
	// cannot see a LUN that is attached but not yet mounted.
	TargetInUse func(iqn string, exceptLUN int) bool
}

// Defaults applied by New to zero Config fields.
const (
	DefaultLoginTimeout       = 30 * time.Second
	DefaultDeviceTimeout      = 30 * time.Second
	DefaultLogoutTimeout      = 30 * time.Second
	DefaultPollInterval       = 100 * time.Millisecond
	DefaultReplacementTimeout = 15 * time.Second
	DefaultPortalLoginTimeout = 5 * time.Second
	DefaultInitiatorNameFile  = "/etc/iscsi/initiatorname.iscsi"
	defaultPort               = "3260"
)

// Initiator attaches and detaches iSCSI LUNs on this host. It is safe for
// concurrent use: calls on the same target IQN are serialized, so that a
// Detach never decides about a session while an Attach on another LUN of the
// same target is half done.
type Initiator struct {
	cfg   Config
	run   hostexec.Runner
	log   *slog.Logger
	locks keyedlock.Map // per target IQN
	held  heldLUNs
}

// New returns an Initiator. run executes iscsiadm (hostexec.OS{} in
// production); log may be nil.
func New(cfg Config, run hostexec.Runner, log *slog.Logger) (*Initiator, error) {
	if run == nil {
		return nil, fmt.Errorf("iscsi: a hostexec.Runner is required: %w", sentinel.ErrInvalid)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, d := range []time.Duration{cfg.LoginTimeout, cfg.DeviceTimeout, cfg.LogoutTimeout, cfg.PollInterval, cfg.ReplacementTimeout, cfg.PortalLoginTimeout} {
		if d < 0 {
			return nil, fmt.Errorf("iscsi: negative timeout or interval in configuration: %w", sentinel.ErrInvalid)
		}
	}
	if strings.ContainsAny(cfg.Iface, " \t\n") {
		return nil, fmt.Errorf("iscsi: iface name %q contains white space: %w", cfg.Iface, sentinel.ErrInvalid)
	}
	setDefault(&cfg.LoginTimeout, DefaultLoginTimeout)
	setDefault(&cfg.DeviceTimeout, DefaultDeviceTimeout)
	setDefault(&cfg.LogoutTimeout, DefaultLogoutTimeout)
	setDefault(&cfg.PollInterval, DefaultPollInterval)
	setDefault(&cfg.ReplacementTimeout, DefaultReplacementTimeout)
	setDefault(&cfg.PortalLoginTimeout, DefaultPortalLoginTimeout)
	if cfg.InitiatorNameFile == "" {
		cfg.InitiatorNameFile = DefaultInitiatorNameFile
	}
	if cfg.SysRoot == "" {
		cfg.SysRoot = "/sys"
	}
	if cfg.DevRoot == "" {
		cfg.DevRoot = "/dev"
	}
	if cfg.MountInfoPath == "" {
		cfg.MountInfoPath = "/proc/self/mountinfo"
	}
	i := &Initiator{cfg: cfg, run: run, log: log}
	if cfg.InitiatorName != "" {
		if name, err := readInitiatorName(cfg.InitiatorNameFile); err == nil && name != cfg.InitiatorName {
			log.Warn("configured iSCSI initiator name differs from the one iscsid uses; targets will see iscsid's",
				"configured", cfg.InitiatorName, "iscsid", name, "file", cfg.InitiatorNameFile)
		}
	}
	return i, nil
}

func setDefault(d *time.Duration, def time.Duration) {
	if *d == 0 {
		*d = def
	}
}

// portal is one validated target portal.
type portal struct {
	host string // IP literal, without brackets
	ip   net.IP
	port int
	arg  string // as passed to iscsiadm -p: "ip:port" or "[ip6]:port"
}

func (p portal) String() string { return p.arg }

// parsePortal validates "ip[:port]".
func parsePortal(s string) (portal, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		// No port: a bare IPv4 or IPv6 address.
		host, port = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"), defaultPort
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return portal{}, fmt.Errorf("iSCSI portal %q is not ip:port (an IP address is required): %w", s, sentinel.ErrInvalid)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n <= 0 || n > 65535 {
		return portal{}, fmt.Errorf("iSCSI portal %q has an invalid port: %w", s, sentinel.ErrInvalid)
	}
	return portal{host: host, ip: ip, port: n, arg: net.JoinHostPort(host, strconv.Itoa(n))}, nil
}

// validate checks t and returns its parsed portals.
func validate(t Target) ([]portal, error) {
	if t.IQN == "" || strings.ContainsAny(t.IQN, " \t\n/") {
		return nil, fmt.Errorf("iSCSI target name %q is invalid: %w", t.IQN, sentinel.ErrInvalid)
	}
	if len(t.Portals) == 0 {
		return nil, fmt.Errorf("iSCSI target %s has no portal: %w", t.IQN, sentinel.ErrInvalid)
	}
	if t.LUN < 0 {
		return nil, fmt.Errorf("iSCSI target %s: LUN %d is negative: %w", t.IQN, t.LUN, sentinel.ErrInvalid)
	}
	for _, c := range []struct {
		what string
		chap *CHAP
	}{{"session", t.CHAP}, {"discovery", t.DiscoveryCHAP}} {
		if c.chap == nil {
			continue
		}
		if c.chap.Username == "" || c.chap.Password == "" {
			return nil, fmt.Errorf("iSCSI target %s: %s CHAP needs both a username and a password: %w", t.IQN, c.what, sentinel.ErrInvalid)
		}
		if (c.chap.MutualUsername == "") != (c.chap.MutualPassword == "") {
			return nil, fmt.Errorf("iSCSI target %s: mutual %s CHAP needs both a username and a password: %w", t.IQN, c.what, sentinel.ErrInvalid)
		}
	}
	var ps []portal
	seen := map[string]bool{}
	for _, s := range t.Portals {
		p, err := parsePortal(s)
		if err != nil {
			return nil, err
		}
		if !seen[p.arg] {
			seen[p.arg] = true
			ps = append(ps, p)
		}
	}
	return ps, nil
}

// errorsJoin joins errs, returning the single error itself when there is one
// (so that its message stays one sentence).
func errorsJoin(errs []error) error {
	if len(errs) == 1 {
		return errs[0]
	}
	return errors.Join(errs...)
}
