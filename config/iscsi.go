package config

// ISCSIConfig configures this host's iSCSI initiator ([iscsi] table). It
// is used only by backends that attach over iSCSI.
type ISCSIConfig struct {
	// InitiatorName overrides the name read from InitiatorNameFile.
	InitiatorName     string `toml:"initiator_name"`
	InitiatorNameFile string `toml:"initiator_name_file"`
	// Iface binds logins to an iscsiadm iface ("" = default).
	Iface string `toml:"iface"`
	// InitiatorIP and HostUUID identify this host to backends.
	InitiatorIP string `toml:"initiator_ip"`
	HostUUID    string `toml:"host_uuid"`
	// Timeouts of each login, of the wait for the block device, and of
	// each logout.
	LoginTimeout  Duration `toml:"login_timeout"`
	DeviceTimeout Duration `toml:"device_timeout"`
	LogoutTimeout Duration `toml:"logout_timeout"`
	// ReplacementTimeout is how long I/O waits for a broken session to
	// reconnect before it fails (open-iscsi's replacement_timeout, set on
	// every session blockvol logs in); PortalLoginTimeout bounds the login
	// to one portal, so that a dead portal costs seconds.
	ReplacementTimeout Duration `toml:"replacement_timeout"`
	PortalLoginTimeout Duration `toml:"portal_login_timeout"`
}
