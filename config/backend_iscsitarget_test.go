package config

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const targetSSH = `
default_backend = "target"
[backends.target]
type = "iscsitarget"
host = "ssh://root@192.0.2.10:2222"
ssh_key = "/etc/blockvol/id_ed25519"
known_hosts = "/etc/blockvol/known_hosts"
tgt_control_port = 12
portal = "192.0.2.10:3260"
iqn_prefix = "iqn.2024-01.org.example.blockvol"
chap_username = "blockvol"
chap_password = "s3cret-pass-word"
preempt = true
[backends.target.pools]
default = "/srv/blockvol"
ssd = "/srv/ssd/blockvol"
`

func TestISCSITargetConfig(t *testing.T) {
	cfg, err := Parse([]byte(targetSSH))
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Backends["target"].Settings.(*ISCSITargetConfig)
	user, addr, ok := c.SSH()
	if !ok || user != "root" || addr != "192.0.2.10:2222" {
		t.Fatalf("SSH() = %q, %q, %v", user, addr, ok)
	}
	if c.TGTControlPort != 12 || c.Portal != "192.0.2.10:3260" || c.DefaultPool != "default" || c.Pools["ssd"] != "/srv/ssd/blockvol" ||
		!c.Preempt || c.CHAPUsername != "blockvol" || c.CHAPPassword != "s3cret-pass-word" || c.LockTimeout.Duration != 30*time.Second {
		t.Fatalf("parsed %+v", c)
	}
	for _, s := range []string{fmt.Sprintf("%v", c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c), fmt.Sprintf("%+v", cfg)} {
		if strings.Contains(s, "s3cret") {
			t.Fatalf("the CHAP password shows in %s", s)
		}
	}
}

func TestISCSITargetLocalDefaults(t *testing.T) {
	cfg, err := Parse([]byte(`
default_backend = "t"
[backends.t]
type = "iscsitarget"
host = "local"
portal = "10.0.0.5"
iqn_prefix = "iqn.2024-01.org.example:blockvol"
`))
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Backends["t"].Settings.(*ISCSITargetConfig)
	if _, _, ok := c.SSH(); ok || c.Host != "" {
		t.Fatalf("local host parsed as %q", c.Host)
	}
	if c.Portal != "10.0.0.5:3260" || c.DefaultPool != "default" || c.Pools["default"] != DefaultISCSITargetPool || len(c.Pools) != 1 {
		t.Fatalf("defaults %+v", c)
	}
	cfg, err = Parse([]byte(`
default_backend = "t"
[backends.t]
type = "iscsitarget"
portal = "[2001:db8::5]:3260"
iqn_prefix = "iqn.2024-01.org.example"
pools = { fast = "/srv/fast" }
`))
	if err != nil {
		t.Fatal(err)
	}
	if c := cfg.Backends["t"].Settings.(*ISCSITargetConfig); c.DefaultPool != "fast" {
		t.Fatalf("the only pool is not the default: %+v", c)
	}
}

func TestISCSITargetPortals(t *testing.T) {
	cfg, err := Parse([]byte(`
default_backend = "t"
[backends.t]
type = "iscsitarget"
portal = "10.0.0.5"
portals = ["10.0.1.5", "[2001:db8::5]:3261"]
iqn_prefix = "iqn.2024-01.org.example"
`))
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Backends["t"].Settings.(*ISCSITargetConfig)
	if want := []string{"10.0.1.5:3260", "[2001:db8::5]:3261"}; c.Portal != "10.0.0.5:3260" || !slices.Equal(c.Portals, want) {
		t.Fatalf("portal %q, portals %q; want 10.0.0.5:3260 and %q", c.Portal, c.Portals, want)
	}
	_, err = Parse([]byte(`
default_backend = "t"
[backends.t]
type = "iscsitarget"
portal = "10.0.0.5"
portals = ["target2.example.org:3260"]
iqn_prefix = "iqn.2024-01.org.example"
`))
	if err == nil || !strings.Contains(err.Error(), `portal "target2.example.org:3260" must be the ip:port`) {
		t.Fatalf("a host name in portals: %v", err)
	}
}

func TestISCSITargetErrorsNameTheKey(t *testing.T) {
	base := func(kv string) string {
		return "default_backend = \"t\"\n[backends.t]\ntype = \"iscsitarget\"\n" + kv
	}
	const ok = "portal = \"192.0.2.1:3260\"\niqn_prefix = \"iqn.2024-01.org.example\"\n"
	const sshOK = "ssh_key = \"/k\"\nknown_hosts = \"/kh\"\n"
	for _, tc := range []struct{ toml, want string }{
		{base(ok + `host = "ftp://x"`), `backends.t.host "ftp://x" must be "local" or ssh://user@host[:port]`},
		{base(ok + sshOK + `host = "ssh://192.0.2.1"`), `backends.t.host "ssh://192.0.2.1" needs a user`},
		{base(ok + sshOK + `host = "ssh://root:pw@192.0.2.1"`), `backends.t.host "ssh://root:pw@192.0.2.1" must not hold a password`},
		{base(ok + sshOK + `host = "ssh://root@192.0.2.1:99999"`), `has an invalid port "99999"`},
		{base(ok + sshOK + `host = "ssh://root@192.0.2.1/srv"`), `without path or query`},
		{base(ok + `host = "ssh://root@192.0.2.1"`), `backends.t.ssh_key "" must be the absolute path of a private key file`},
		{base(ok + `host = "ssh://root@192.0.2.1"` + "\nssh_key = \"/k\""), `backends.t.known_hosts "" must be the absolute path of a known_hosts file`},
		{base(ok + `ssh_key = "/k"`), `backends.t.ssh_key is only used with an ssh:// host`},
		{base(`iqn_prefix = "iqn.2024-01.org.example"`), `backends.t.portal "" must be the ip:port initiators log in to`},
		{base(`iqn_prefix = "iqn.2024-01.org.example"` + "\nportal = \"target.example.org:3260\""), `backends.t.portal "target.example.org:3260" must be the ip:port`},
		{base(`portal = "192.0.2.1:3260"`), `backends.t.iqn_prefix is required`},
		{base(`portal = "192.0.2.1:3260"` + "\niqn_prefix = \"iqn.2024-01.Org.Example\""), `backends.t.iqn_prefix "iqn.2024-01.Org.Example" must be an iSCSI qualified name in lower case`},
		{base(`portal = "192.0.2.1:3260"` + "\niqn_prefix = \"iqn.2024-01.org.example:\""), `must be an iSCSI qualified name`},
		{base(ok + `tgt_control_port = -1`), `backends.t.tgt_control_port -1 must be between 0 and 65535`},
		{base(ok + `pools = { default = "srv" }`), `backends.t.pools.default "srv" must be an absolute, clean directory path`},
		{base(ok + `pools = { a = "/srv/x", b = "/srv/x" }`), `backends.t.pools.b "/srv/x" is also pools.a`},
		{base(ok + `pools = { a = "/srv/a", b = "/srv/b" }`), `backends.t.default_pool "default" is not one of pools (a, b)`},
		{base(ok + `pools = {}`), `backends.t.pools must name at least one directory`},
		{base(ok + `chap_username = "u"`), `backends.t.chap_username and chap_password must be given together`},
		{base(ok + `lock_timeout = "2m"`), `backends.t.lock_timeout 2m0s must be positive and below timeouts.other (50s)`},
		{base(ok + `chap_secret = "x"`), `unknown key backends.t.chap_secret`},
	} {
		_, err := Parse([]byte(tc.toml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v; want an error containing %q", tc.toml, err, tc.want)
		}
	}
}

// The commented-out [backends.target] example of config.example.toml,
// uncommented up to the blank line that ends it, is valid.
func TestISCSITargetExampleBlock(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "config.example.toml"))
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(data), "\n# [backends.target]\n")
	if !ok {
		t.Fatal("config.example.toml has no commented-out [backends.target] block")
	}
	block, _, _ = strings.Cut(block, "\n\n")
	var b strings.Builder
	b.WriteString("default_backend = \"target\"\n[backends.target]\n")
	for _, line := range strings.Split(block, "\n") {
		b.WriteString(strings.TrimPrefix(line, "# ") + "\n")
	}
	cfg, err := Parse([]byte(b.String()))
	if err != nil {
		t.Fatalf("the example block does not parse: %v\n%s", err, b.String())
	}
	c := cfg.Backends["target"].Settings.(*ISCSITargetConfig)
	if _, addr, ok := c.SSH(); !ok || addr != "192.0.2.10:22" || c.Pools["default"] != DefaultISCSITargetPool || c.Portal != "192.0.2.10:3260" {
		t.Errorf("example block read as %+v", c)
	}
}
