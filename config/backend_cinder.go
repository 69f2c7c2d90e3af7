package config

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// CinderConfig configures a "cinder" backend: volumes in OpenStack
// Cinder, attached to this host (no Nova instance needed) over iSCSI with
// the initiator of the [iscsi] table, whose host_uuid and initiator_ip
// identify this host to Cinder.
type CinderConfig struct {
	Type string `toml:"type"`
	// AuthURL is Keystone's URL, e.g. "https://keystone.example:5000/v3".
	AuthURL string `toml:"auth_url"`
	// Password login: the user by name or ID, the project by name or ID.
	Username string `toml:"username"`
	UserID   string `toml:"user_id"`
	Password Secret `toml:"password"`
	// ProjectName/ProjectID scope the token: volumes are the project's.
	ProjectName string `toml:"project_name"`
	ProjectID   string `toml:"project_id"`
	// DomainName or DomainID applies to both the user and the project
	// unless the specific keys are given; with none of the four,
	// "Default".
	DomainName        string `toml:"domain_name"`
	DomainID          string `toml:"domain_id"`
	UserDomainName    string `toml:"user_domain_name"`
	UserDomainID      string `toml:"user_domain_id"`
	ProjectDomainName string `toml:"project_domain_name"`
	ProjectDomainID   string `toml:"project_domain_id"`
	// Application credential login, instead of the password: by ID, or
	// by name together with the user.
	ApplicationCredentialID     string `toml:"application_credential_id"`
	ApplicationCredentialName   string `toml:"application_credential_name"`
	ApplicationCredentialSecret Secret `toml:"application_credential_secret"`
	// Region and Interface (public, internal, admin) select Cinder's
	// endpoint in the catalog; Endpoint skips the catalog.
	Region    string `toml:"region"`
	Interface string `toml:"interface"`
	Endpoint  string `toml:"endpoint"`
	// CAFile is a PEM bundle trusted for TLS ("" = the system's).
	CAFile string `toml:"ca_file"`
	// RequestTimeout bounds each HTTP request. Default 60s.
	RequestTimeout Duration `toml:"request_timeout"`
	// AttachAPI is "auto" (attachments API where Cinder offers 3.44,
	// else the legacy actions), "attachments" or "legacy".
	AttachAPI string `toml:"attach_api"`
	// Preempt makes every attach take a volume over from another host
	// (force-detach: needs Cinder's admin role).
	Preempt bool `toml:"preempt"`
	// HostName names this host to Cinder; "" = the system's host name.
	HostName string `toml:"host_name"`
	// Multipath asks Cinder for every portal of a target.
	Multipath bool `toml:"multipath"`
	// PortalMap replaces a target portal Cinder returns ("address:port",
	// its target_ip_address) by the one this host dials: for targets
	// reached through NAT or a forwarder. E.g.
	// portal_map = { "192.168.10.5:3260" = "203.0.113.7:3260" }.
	PortalMap map[string]string `toml:"portal_map"`
	// Zone is the availability zone of this host ("" = none): CSI reports
	// it as the node's topology and creates volumes there.
	Zone string `toml:"zone"`
	// HostUUIDFile keeps the host UUID generated when [iscsi] host_uuid
	// is not set. Default <state_dir>/host-uuid.
	HostUUIDFile string `toml:"host_uuid_file"`
	// StateDir holds what this host must remember of attached volumes.
	// Default <state_dir>/cinder.
	StateDir string `toml:"state_dir"`
	// CinderDockerDriverConfig names a cinder-docker-driver config.json
	// whose values fill the keys this table leaves unset.
	CinderDockerDriverConfig string `toml:"cinder_docker_driver_config"`

	// HostUUID and InitiatorIP are filled in from the [iscsi] table, or
	// else from the cinder-docker-driver file.
	HostUUID    string `toml:"-"`
	InitiatorIP string `toml:"-"`

	fileErr error // reading CinderDockerDriverConfig, reported by validate
}

// cinderDockerDriver is cinder-docker-driver's config.json (Go's JSON
// decoding matches the keys case-insensitively, as that driver did).
// DefaultVolSz, MountPoint and InitiatorIFace have blockvol equivalents
// elsewhere (defaults.size, mount_dir, [iscsi] iface) and are not taken.
type cinderDockerDriver struct {
	Endpoint    string
	Username    string
	Password    string
	TenantID    string
	DomainName  string
	Region      string
	HostUUID    string
	InitiatorIP string
}

func init() { registerBackendType("cinder", func() BackendSettings { return &CinderConfig{} }) }

func (k *CinderConfig) fill(c *Config) {
	k.HostUUID, k.InitiatorIP = c.ISCSI.HostUUID, c.ISCSI.InitiatorIP
	if k.CinderDockerDriverConfig != "" {
		k.fileErr = k.fillFromCinderDockerDriver()
	}
	set := func(dst *string, v string) {
		if *dst == "" {
			*dst = v
		}
	}
	if k.DomainName == "" && k.DomainID == "" && k.UserDomainName == "" && k.UserDomainID == "" && k.ProjectDomainName == "" && k.ProjectDomainID == "" {
		k.DomainName = "Default"
	}
	if k.UserDomainName == "" && k.UserDomainID == "" {
		k.UserDomainName, k.UserDomainID = k.DomainName, k.DomainID
	}
	if k.ProjectDomainName == "" && k.ProjectDomainID == "" {
		k.ProjectDomainName, k.ProjectDomainID = k.DomainName, k.DomainID
	}
	set(&k.Interface, "public")
	set(&k.AttachAPI, "auto")
	set(&k.StateDir, filepath.Join(c.StateDir, "cinder"))
	set(&k.HostUUIDFile, c.HostUUIDFile())
	if k.RequestTimeout.Duration == 0 {
		k.RequestTimeout.Duration = 60 * time.Second
	}
}

// fillFromCinderDockerDriver fills unset keys from the config.json of
// cinder-docker-driver; the TOML values win.
func (k *CinderConfig) fillFromCinderDockerDriver() error {
	data, err := os.ReadFile(k.CinderDockerDriverConfig)
	if err != nil {
		return err
	}
	var d cinderDockerDriver
	if err := json.Unmarshal(data, &d); err != nil {
		return fmt.Errorf("%s is not valid JSON: %w", k.CinderDockerDriverConfig, err)
	}
	set := func(dst *string, v string) {
		if *dst == "" {
			*dst = v
		}
	}
	set(&k.AuthURL, d.Endpoint)
	if k.Username == "" && k.UserID == "" {
		k.Username = d.Username
	}
	if k.Password == "" {
		k.Password = Secret(d.Password)
	}
	if k.ProjectName == "" && k.ProjectID == "" {
		k.ProjectID = d.TenantID
	}
	if k.DomainID == "" {
		set(&k.DomainName, d.DomainName)
	}
	set(&k.Region, d.Region)
	set(&k.HostUUID, d.HostUUID)
	set(&k.InitiatorIP, d.InitiatorIP)
	return nil
}

var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

func (k *CinderConfig) validate(key string, c *Config) []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(key+"."+format, args...)) }
	if k.fileErr != nil {
		bad("cinder_docker_driver_config: %v", k.fileErr)
	}
	if u, err := url.Parse(k.AuthURL); k.AuthURL == "" {
		bad("auth_url is required (Keystone's URL, e.g. \"https://keystone.example:5000/v3\")")
	} else if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("auth_url %q must be an http:// or https:// URL", k.AuthURL)
	}
	if k.Endpoint != "" {
		// What precedes a %(project_id)s template (no URL escape).
		head, _, _ := strings.Cut(k.Endpoint, "%(")
		if u, err := url.Parse(head); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("endpoint %q must be an http:// or https:// URL", k.Endpoint)
		}
	}
	switch {
	case k.ApplicationCredentialSecret != "":
		if k.ApplicationCredentialID == "" && (k.ApplicationCredentialName == "" || k.Username == "" && k.UserID == "") {
			bad("application_credential_secret needs application_credential_id, or application_credential_name with username or user_id")
		}
	case k.ApplicationCredentialID != "" || k.ApplicationCredentialName != "":
		bad("application_credential_secret is required with an application credential")
	default:
		if k.Username == "" && k.UserID == "" {
			bad("username or user_id is required (or an application credential)")
		}
		if k.Password == "" {
			bad("password is required (or an application credential)")
		}
		if k.ProjectName == "" && k.ProjectID == "" {
			bad("project_name or project_id is required: volumes belong to a project")
		}
	}
	switch k.Interface {
	case "public", "internal", "admin":
	default:
		bad("interface %q must be public, internal or admin", k.Interface)
	}
	switch k.AttachAPI {
	case "auto", "attachments", "legacy":
	default:
		bad("attach_api %q must be auto, attachments or legacy", k.AttachAPI)
	}
	if k.RequestTimeout.Duration < 0 {
		bad("request_timeout %s must not be negative", k.RequestTimeout.Duration)
	}
	if strings.ContainsAny(k.HostName, " \t\n") {
		bad("host_name %q must not contain white space", k.HostName)
	}
	for name, p := range map[string]string{"state_dir": k.StateDir, "host_uuid_file": k.HostUUIDFile, "ca_file": k.CAFile, "cinder_docker_driver_config": k.CinderDockerDriverConfig} {
		if p != "" && !filepath.IsAbs(p) {
			bad("%s %q must be an absolute path", name, p)
		}
	}
	for from, to := range k.PortalMap {
		for _, p := range []string{from, to} {
			if _, port, err := net.SplitHostPort(p); err != nil || port == "" {
				bad("portal_map: %q is not an address:port portal", p)
			}
		}
	}
	if k.HostUUID != "" && !uuidRE.MatchString(k.HostUUID) {
		errs = append(errs, fmt.Errorf("iscsi.host_uuid %q must be a UUID (Cinder identifies hosts by one); leave it unset to have one generated", k.HostUUID))
	}
	if k.InitiatorIP != "" && net.ParseIP(k.InitiatorIP) == nil {
		errs = append(errs, fmt.Errorf("iscsi.initiator_ip %q is not an IP address", k.InitiatorIP))
	}
	return errs
}
