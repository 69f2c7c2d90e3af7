module github.com/blockvol/blockvol

go 1.26.8

require github.com/BurntSushi/toml v1.6.0

require (
	github.com/Microsoft/go-winio v0.6.4 // indirect
	github.com/coreos/go-systemd v0.0.0-20191104093116-d3cd4ed1dbcf // indirect
	github.com/docker/go-connections v0.8.2 // indirect
	github.com/docker/go-plugins-helpers v0.0.0-20240701071450-45e2431495c8 // indirect
	golang.org/x/sys v0.49.0 // indirect
)
