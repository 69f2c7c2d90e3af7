package cinder

import (
	"log/slog"

	"github.com/blockvol/blockvol/config"
)

// NewFromConfig builds a Backend from its [backends.NAME] table (filled in
// and validated by package config).
func NewFromConfig(k *config.CinderConfig, ini Initiator, log *slog.Logger) (*Backend, error) {
	return New(ConfigOf(k), ini, log)
}

// ConfigOf translates the configuration file's settings.
func ConfigOf(k *config.CinderConfig) Config {
	return Config{
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
		StateDir:                    k.StateDir,
	}
}
