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
}
