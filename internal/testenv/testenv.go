// Package testenv gates tests that need root or host tools.
//
// Such tests skip where a prerequisite is missing, so that `go test` works
// anywhere. CI installs every tool and sets BLOCKVOL_NO_SKIP=1: there a
// missing prerequisite is a broken setup, and the test fails instead of
// skipping quietly.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// NoSkipEnv is the variable that turns skips into failures.
const NoSkipEnv = "BLOCKVOL_NO_SKIP"

// Skip skips t for reason, or fails it when NoSkipEnv is set.
func Skip(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv(NoSkipEnv) == "1" {
		t.Fatalf("prerequisite missing with %s=1: %s", NoSkipEnv, reason)
	}
	t.Skip(reason)
}

// RequireRoot skips (see Skip) unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root")
	}
}

// RequireLong skips t in -short mode (`make unit`), which must start no
// daemon: what is the daemon t would start (tgtd, sshd, dockerd). It is a
// plain skip even with NoSkipEnv set: -short asks for it.
func RequireLong(t testing.TB, what string) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: this test starts " + what)
	}
}

// RequireTools skips (see Skip) unless every tool is on PATH.
func RequireTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			Skip(t, tool+" not installed")
		}
	}
}
