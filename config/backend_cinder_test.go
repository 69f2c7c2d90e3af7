package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func cinderSettings(t *testing.T, cfg Config, name string) *CinderConfig {
	t.Helper()
	k, ok := cfg.Backends[name].Settings.(*CinderConfig)
	if !ok {
		t.Fatalf("backend %s is %T", name, cfg.Backends[name].Settings)
	}
	return k
}

func TestCinderDefaults(t *testing.T) {
	cfg, err := Parse([]byte(`
state_dir = "/srv/bv"
default_backend = "os"
[iscsi]
host_uuid = "6F1C3A52-1B1E-4F5E-9A53-3F1D8E0C2A10"
initiator_ip = "10.0.0.5"
[backends.os]
type = "cinder"
auth_url = "https://keystone.example:5000/v3"
username = "docker"
password = "pw"
project_name = "containers"
`))
	if err != nil {
		t.Fatal(err)
	}
	k := cinderSettings(t, cfg, "os")
	if k.UserDomainName != "Default" || k.ProjectDomainName != "Default" || k.Interface != "public" || k.AttachAPI != "auto" ||
		k.StateDir != "/srv/bv/cinder" || k.HostUUIDFile != "/srv/bv/host-uuid" || k.RequestTimeout.Duration != 60*time.Second ||
		k.HostUUID != "6F1C3A52-1B1E-4F5E-9A53-3F1D8E0C2A10" || k.InitiatorIP != "10.0.0.5" {
		t.Errorf("defaults: %+v", k)
	}
	if s := fmt.Sprintf("%v %+v", k, *k); strings.Contains(s, "pw ") || strings.Contains(s, ":pw") {
		t.Errorf("the password shows in %s", s)
	}
}

func TestCinderDomains(t *testing.T) {
	cfg, err := Parse([]byte(`
default_backend = "os"
[backends.os]
type = "cinder"
auth_url = "http://k:5000/v3"
user_id = "u1"
password = "pw"
project_name = "p"
domain_id = "d1"
project_domain_name = "Projects"
`))
	if err != nil {
		t.Fatal(err)
	}
	k := cinderSettings(t, cfg, "os")
	if k.UserDomainID != "d1" || k.UserDomainName != "" || k.ProjectDomainName != "Projects" || k.ProjectDomainID != "" {
		t.Errorf("domains: user %q/%q project %q/%q", k.UserDomainName, k.UserDomainID, k.ProjectDomainName, k.ProjectDomainID)
	}
}

func TestCinderDockerDriverConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.json")
	if err := os.WriteFile(path, []byte(`{
  "Endpoint": "http://172.16.140.145:5000/v3", "Username": "Fred", "Password": "FredsPassWord",
  "TenantID": "979ddb6183834b9993954ca6de518c5a", "DomainName": "MyAuthDomain", "Region": "RegionTwo",
  "DefaultVolSz": 5, "MountPoint": "/var/lib/cinder/mount", "HostUUID": "6f1c3a52-1b1e-4f5e-9a53-3f1d8e0c2a10",
  "InitiatorIP": "10.0.0.7", "InitiatorIFace": "eth1"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse([]byte(fmt.Sprintf(`
default_backend = "os"
[backends.os]
type = "cinder"
cinder_docker_driver_config = %q
region = "RegionOne"
`, path)))
	if err != nil {
		t.Fatal(err)
	}
	k := cinderSettings(t, cfg, "os")
	if k.AuthURL != "http://172.16.140.145:5000/v3" || k.Username != "Fred" || string(k.Password) != "FredsPassWord" ||
		k.ProjectID != "979ddb6183834b9993954ca6de518c5a" || k.UserDomainName != "MyAuthDomain" || k.ProjectDomainName != "MyAuthDomain" ||
		k.HostUUID != "6f1c3a52-1b1e-4f5e-9a53-3f1d8e0c2a10" || k.InitiatorIP != "10.0.0.7" {
		t.Errorf("from config.json: %+v", k)
	}
	if k.Region != "RegionOne" {
		t.Errorf("region %q: the TOML value must win over config.json's", k.Region)
	}

	// [iscsi] wins over the file too.
	cfg, err = Parse([]byte(fmt.Sprintf(`
default_backend = "os"
[iscsi]
host_uuid = "11111111-2222-4333-8444-555555555555"
[backends.os]
type = "cinder"
cinder_docker_driver_config = %q
`, path)))
	if err != nil {
		t.Fatal(err)
	}
	if k := cinderSettings(t, cfg, "os"); k.HostUUID != "11111111-2222-4333-8444-555555555555" {
		t.Errorf("host UUID %q, want the [iscsi] one", k.HostUUID)
	}

	for _, tc := range []struct{ file, want string }{
		{filepath.Join(dir, "none.json"), "backends.os.cinder_docker_driver_config: open"},
		{writeFile(t, dir, "bad.json", "{Endpoint: x}"), "is not valid JSON"},
	} {
		_, err := Parse([]byte(fmt.Sprintf("default_backend = \"os\"\n[backends.os]\ntype = \"cinder\"\ncinder_docker_driver_config = %q\n", tc.file)))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config.json %s: %v; want %q", tc.file, err, tc.want)
		}
	}
}

func writeFile(t *testing.T, dir, name, data string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCinderErrorsNameTheKey(t *testing.T) {
	base := "default_backend = \"os\"\n[backends.os]\ntype = \"cinder\"\n"
	creds := "auth_url = \"http://k:5000/v3\"\nusername = \"u\"\npassword = \"p\"\nproject_name = \"p\"\n"
	for _, tc := range []struct{ toml, want string }{
		{base, "backends.os.auth_url is required"},
		{base + "auth_url = \"k:5000\"\nusername = \"u\"\npassword = \"p\"\nproject_name = \"p\"\n", `backends.os.auth_url "k:5000" must be an http:// or https:// URL`},
		{base + "auth_url = \"http://k/v3\"\npassword = \"p\"\nproject_name = \"p\"\n", "backends.os.username or user_id is required"},
		{base + "auth_url = \"http://k/v3\"\nusername = \"u\"\nproject_name = \"p\"\n", "backends.os.password is required"},
		{base + "auth_url = \"http://k/v3\"\nusername = \"u\"\npassword = \"p\"\n", "backends.os.project_name or project_id is required"},
		{base + "auth_url = \"http://k/v3\"\napplication_credential_id = \"a\"\n", "backends.os.application_credential_secret is required"},
		{base + "auth_url = \"http://k/v3\"\napplication_credential_name = \"a\"\napplication_credential_secret = \"s\"\n", "application_credential_name with username or user_id"},
		{base + creds + "interface = \"private\"\n", `backends.os.interface "private" must be public, internal or admin`},
		{base + creds + "attach_api = \"nova\"\n", `backends.os.attach_api "nova" must be auto, attachments or legacy`},
		{base + creds + "endpoint = \"cinder:8776\"\n", `backends.os.endpoint "cinder:8776" must be an http`},
		{base + creds + "endpoint = \"cinder:8776/v3/%(project_id)s\"\n", `backends.os.endpoint "cinder:8776/v3/%(project_id)s" must be an http`},
		{base + creds + "portal_map = { \"10.0.0.5\" = \"192.0.2.1:3260\" }\n", `backends.os.portal_map: "10.0.0.5" is not an address:port portal`},
		{base + creds + "state_dir = \"rel\"\n", `backends.os.state_dir "rel" must be an absolute path`},
		{base + creds + "request_timeout = \"-1s\"\n", "backends.os.request_timeout -1s must not be negative"},
		{base + creds + "host_name = \"a b\"\n", "backends.os.host_name"},
		{base + creds + "[iscsi]\nhost_uuid = \"myhost\"\n", `iscsi.host_uuid "myhost" must be a UUID`},
		{base + creds + "[iscsi]\ninitiator_ip = \"eth0\"\n", `iscsi.initiator_ip "eth0" is not an IP address`},
		{base + creds + "pasword = \"x\"\n", "unknown key backends.os.pasword"},
	} {
		_, err := Parse([]byte(tc.toml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v; want an error containing %q", tc.toml, err, tc.want)
		}
	}
	// An application credential alone is enough.
	if _, err := Parse([]byte(base + "auth_url = \"http://k/v3\"\napplication_credential_id = \"a\"\napplication_credential_secret = \"s\"\n")); err != nil {
		t.Errorf("application credential config rejected: %v", err)
	}
}

// The commented-out example in config.example.toml, uncommented, is valid.
func TestCinderExampleBlock(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "config.example.toml"))
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(data), "# [backends.cinder]\n")
	if !ok {
		t.Fatal("config.example.toml has no commented-out [backends.cinder] block")
	}
	var b strings.Builder
	b.WriteString("default_backend = \"cinder\"\n[backends.cinder]\n")
	for _, line := range strings.Split(block, "\n") {
		b.WriteString(strings.TrimPrefix(line, "# ") + "\n")
	}
	cfg, err := Parse([]byte(b.String()))
	if err != nil {
		t.Fatalf("the example block does not parse: %v\n%s", err, b.String())
	}
	if k := cinderSettings(t, cfg, "cinder"); k.AuthURL != "https://keystone.example:5000/v3" || k.ProjectName != "containers" || k.UserDomainName != "Default" {
		t.Errorf("example block read as %+v", k)
	}
}

// The documented endpoint template and a portal map are accepted.
func TestCinderEndpointTemplateAndPortalMap(t *testing.T) {
	cfg, err := Parse([]byte(`default_backend = "os"
[backends.os]
type = "cinder"
auth_url = "http://k:5000/v3"
username = "u"
password = "p"
project_name = "p"
endpoint = "https://cinder.example:8776/v3/%(project_id)s"
portal_map = { "192.168.10.5:3260" = "203.0.113.7:3260" }
`))
	if err != nil {
		t.Fatal(err)
	}
	k := cinderSettings(t, cfg, "os")
	if k.Endpoint != "https://cinder.example:8776/v3/%(project_id)s" || k.PortalMap["192.168.10.5:3260"] != "203.0.113.7:3260" {
		t.Errorf("endpoint %q, portal_map %v", k.Endpoint, k.PortalMap)
	}
}
