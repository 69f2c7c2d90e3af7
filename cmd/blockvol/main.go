// Command blockvol is a Docker volume plugin that gives containers
// persistent block volumes. `blockvol serve` runs the plugin; see README.md.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/blockvol/blockvol/config"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `usage: blockvol <command> [flags]

commands:
  serve [--config FILE] [--csi-endpoint unix:///PATH]
                          serve the Docker volume plugin socket (takes the
                          socket from systemd when socket-activated), and
                          CSI when an endpoint is given (docs/csi.md)
  serve --managed         the same inside a Docker managed plugin (make plugin)
  volume ls|inspect|create|rm|mount|unmount
                          manage volumes through the running plugin
                          (blockvol volume --help)
  doctor                  check this host, the configuration, the socket
                          and the backends (blockvol doctor --help)
  version                 print the version
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		fl := flag.NewFlagSet("serve", flag.ContinueOnError)
		fl.SetOutput(stderr)
		configPath := fl.String("config", defaultConfigPath, "configuration file (TOML)")
		csiEndpoint := fl.String("csi-endpoint", "", "also serve CSI on this endpoint, unix:///PATH (overrides csi.endpoint)")
		managed := fl.Bool("managed", false, "run as a Docker managed plugin: configuration from the plugin's settings (docker-plugin/config.json)")
		if err := fl.Parse(args[1:]); err != nil {
			return 2
		}
		var cfg config.Config
		var err error
		switch {
		case *managed && isFlagSet(fl, "config"):
			err = errManagedWithConfig
		case *managed:
			cfg, err = managedConfig(os.Getenv)
		default:
			cfg, err = config.Load(*configPath)
		}
		if err == nil {
			err = serve(cfg, *csiEndpoint, stderr)
		}
		if err != nil {
			fmt.Fprintf(stderr, "blockvol: %v\n", err)
			return 1
		}
		return 0
	case "volume", "volumes":
		return volumeCmd(args[1:], stdout, stderr)
	case "doctor":
		return doctorCmd(args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, version)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "blockvol: unknown command %q\n%s", args[0], usage)
		return 2
	}
}

var errUsage = errors.New("usage")

// isFlagSet reports whether the command line gave flag name.
func isFlagSet(fl *flag.FlagSet, name string) bool {
	set := false
	fl.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
