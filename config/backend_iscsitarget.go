package config

import (
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// ISCSITargetConfig configures an "iscsitarget" backend: volumes are
// sparse files on a Linux iSCSI target host (this host, or one reached over
// SSH), exported by tgt. Every agent configured with the same target host
// shares its volumes. This host's initiator comes from the [iscsi] table.
type ISCSITargetConfig struct {
	Type string `toml:"type"`
	// Host is "" or "local" (this host), or ssh://user@host[:port].
	Host string `toml:"host"`
	// SSHKey is the private key file (unencrypted) for an ssh:// Host.
	SSHKey string `toml:"ssh_key"`
	// KnownHosts holds the target host's SSH host key; it is checked.
	KnownHosts string `toml:"known_hosts"`
	// TGTControlPort is tgtd's control port on the target host (tgtadm -C).
	TGTControlPort int `toml:"tgt_control_port"`
	// Portal is the ip:port initiators log in to (port 3260 by default).
	Portal string `toml:"portal"`
	// Portals are more ip:port the target host answers on: every volume is
	// logged in through Portal and each of them, in parallel, and used
	// through dm-multipath when multipathd runs on this host.
	Portals []string `toml:"portals"`
	// IQNPrefix starts every target name: <iqn_prefix>:<volume>.
	IQNPrefix string `toml:"iqn_prefix"`
	// Pools maps volume types (`-o type=...`) to directories on the
	// target host. Default: {default = "/var/lib/blockvol/iscsitarget"}.
	Pools map[string]string `toml:"pools"`
	// DefaultPool is the pool of a create without type; "" = "default",
	// or the only pool.
	DefaultPool string `toml:"default_pool"`
	// CHAPUsername and CHAPPassword, when set, are required of every
	// initiator on every target. The password is never logged.
	CHAPUsername string `toml:"chap_username"`
	CHAPPassword Secret `toml:"chap_password"`
	// Preempt makes every attach take a volume over from another host.
	Preempt bool `toml:"preempt"`
	// LockTimeout bounds the wait for the target host's lock. Default 30s.
	LockTimeout Duration `toml:"lock_timeout"`
}

// Secret is a configuration value that never shows in logs or %v output.
type Secret string

// String implements fmt.Stringer: the value is hidden.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "<redacted>"
}

// GoString implements fmt.GoStringer: the value is hidden.
func (s Secret) GoString() string { return strconv.Quote(s.String()) }

// DefaultISCSITargetPool is the directory of the default pool.
const DefaultISCSITargetPool = "/var/lib/blockvol/iscsitarget"

func init() {
	registerBackendType("iscsitarget", func() BackendSettings { return &ISCSITargetConfig{} })
}

func (t *ISCSITargetConfig) fill(c *Config) {
	if t.Host == "local" {
		t.Host = ""
	}
	if t.Pools == nil {
		t.Pools = map[string]string{"default": DefaultISCSITargetPool}
	}
	if t.DefaultPool == "" {
		t.DefaultPool = "default"
		if len(t.Pools) == 1 {
			for name := range t.Pools {
				t.DefaultPool = name
			}
		}
	}
	if t.LockTimeout.Duration == 0 {
		t.LockTimeout.Duration = 30 * time.Second
	}
	t.Portal = withDefaultPort(t.Portal)
	for k, p := range t.Portals {
		t.Portals[k] = withDefaultPort(p)
	}
}

// withDefaultPort gives a bare IP address iSCSI's port 3260.
func withDefaultPort(p string) string {
	if p != "" && net.ParseIP(strings.Trim(p, "[]")) != nil {
		return net.JoinHostPort(strings.Trim(p, "[]"), "3260")
	}
	return p
}

// SSH is the parsed ssh:// Host: user and host:port. ok is false for a
// local target host.
func (t *ISCSITargetConfig) SSH() (user, addr string, ok bool) {
	u, err := parseSSHURL(t.Host)
	if err != nil || u == nil {
		return "", "", false
	}
	port := u.Port()
	if port == "" {
		port = "22"
	}
	return u.User.Username(), net.JoinHostPort(u.Hostname(), port), true
}

// parseSSHURL parses ssh://user@host[:port]; "" yields nil.
func parseSSHURL(s string) (*url.URL, error) {
	if s == "" {
		return nil, nil
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "ssh" || u.Opaque != "" {
		return nil, fmt.Errorf("must be \"local\" or ssh://user@host[:port]")
	}
	switch {
	case u.User == nil || u.User.Username() == "":
		return nil, fmt.Errorf("needs a user: ssh://user@host[:port]")
	case u.Hostname() == "":
		return nil, fmt.Errorf("needs a host: ssh://user@host[:port]")
	case func() bool { _, set := u.User.Password(); return set }():
		return nil, fmt.Errorf("must not hold a password (key authentication only; see ssh_key)")
	case (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
		return nil, fmt.Errorf("must be ssh://user@host[:port], without path or query")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("has an invalid port %q", p)
		}
	}
	return u, nil
}

// iqnPrefixRE: "iqn." yyyy-mm "." reversed domain, optionally ":" and more,
// in the lower case RFC 3720 normalizes names to.
var iqnPrefixRE = regexp.MustCompile(`^iqn\.[0-9]{4}-(0[1-9]|1[0-2])\.[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[a-z0-9.:-]*[a-z0-9.-])?$`)

var poolNameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$`)

func (t *ISCSITargetConfig) validate(key string, c *Config) []error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s.%s", key, fmt.Sprintf(format, args...)))
	}
	u, err := parseSSHURL(t.Host)
	if err != nil {
		bad("host %q %v", t.Host, err)
	}
	if u != nil {
		if !filepath.IsAbs(t.SSHKey) {
			bad("ssh_key %q must be the absolute path of a private key file (needed with an ssh:// host)", t.SSHKey)
		}
		if !filepath.IsAbs(t.KnownHosts) {
			bad("known_hosts %q must be the absolute path of a known_hosts file holding the target host's key (needed with an ssh:// host)", t.KnownHosts)
		}
	} else if err == nil {
		if t.SSHKey != "" {
			bad("ssh_key is only used with an ssh:// host")
		}
		if t.KnownHosts != "" {
			bad("known_hosts is only used with an ssh:// host")
		}
	}
	if t.TGTControlPort < 0 || t.TGTControlPort > 65535 {
		bad("tgt_control_port %d must be between 0 and 65535", t.TGTControlPort)
	}
	for _, p := range append([]string{t.Portal}, t.Portals...) {
		if host, port, err := net.SplitHostPort(p); err != nil || net.ParseIP(host) == nil {
			bad("portal %q must be the ip:port initiators log in to (an IP address, not a host name)", p)
		} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			bad("portal %q has an invalid port", p)
		}
	}
	switch {
	case t.IQNPrefix == "":
		bad("iqn_prefix is required, e.g. \"iqn.2024-01.org.example.blockvol\"")
	case !iqnPrefixRE.MatchString(t.IQNPrefix):
		bad("iqn_prefix %q must be an iSCSI qualified name in lower case, such as \"iqn.2024-01.org.example.blockvol\"", t.IQNPrefix)
	case len(t.IQNPrefix) > 160:
		bad("iqn_prefix %q is longer than 160 bytes, leaving too little room for volume names", t.IQNPrefix)
	}
	if len(t.Pools) == 0 {
		bad("pools must name at least one directory")
	}
	names := make([]string, 0, len(t.Pools))
	for name := range t.Pools {
		names = append(names, name)
	}
	sort.Strings(names)
	dirs := map[string]string{}
	for _, name := range names {
		dir := t.Pools[name]
		switch {
		case !poolNameRE.MatchString(name):
			bad("pools: type %q must be letters, digits, '_', '.' or '-'", name)
		case !filepath.IsAbs(dir) || filepath.Clean(dir) != dir || dir == "/" || strings.TrimSpace(dir) != dir:
			bad("pools.%s %q must be an absolute, clean directory path on the target host", name, dir)
		case dirs[dir] != "":
			bad("pools.%s %q is also pools.%s: each pool needs its own directory", name, dir, dirs[dir])
		default:
			dirs[dir] = name
		}
	}
	if _, ok := t.Pools[t.DefaultPool]; !ok && len(t.Pools) > 0 {
		bad("default_pool %q is not one of pools (%s)", t.DefaultPool, strings.Join(names, ", "))
	}
	switch {
	case (t.CHAPUsername == "") != (t.CHAPPassword == ""):
		bad("chap_username and chap_password must be given together")
	case strings.ContainsAny(t.CHAPUsername, " \t\r\n"):
		bad("chap_username %q must not contain white space", t.CHAPUsername)
	case strings.ContainsAny(string(t.CHAPPassword), "\r\n\x00"):
		bad("chap_password must not contain a line break")
	}
	if t.LockTimeout.Duration <= 0 || t.LockTimeout.Duration >= c.Timeouts.Other.Duration {
		bad("lock_timeout %s must be positive and below timeouts.other (%s)", t.LockTimeout.Duration, c.Timeouts.Other.Duration)
	}
	return errs
}
