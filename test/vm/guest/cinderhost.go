package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The cinder backend of an agent (vmtest.cinder=ADDR): the real Keystone
// and Cinder of test/openstack run on the test machine's loopback, and
// the host test (test/vm/cinderfwd.go) forwards them into its namespace
// at ADDR: Keystone on :5000, Cinder on :8776, and the tgtd Cinder exports
// on (127.0.0.1:3260 in Cinder's answers) on :3261, which portal_map makes
// the agent dial.

// Ports of the forwarders at vmtest.cinder; test/vm/multihost_cinder_test.go
// uses the same.
const (
	cinderKeystonePort = 5000
	cinderAPIPort      = 8776
	cinderPortalPort   = 3261
)

// agentCinderTOML is the [backends.cinder] table, or "" without
// vmtest.cinder.
func agentCinderTOML(p agentParams) string {
	if p.cinder == "" {
		return ""
	}
	return fmt.Sprintf(`
[backends.cinder]
type = "cinder"
auth_url = "http://%[1]s:%[2]d/v3"
endpoint = "http://%[1]s:%[3]d/v3/%%(project_id)s"
username = "admin"
password = "secret"
project_name = "admin"
region = "RegionOne"
host_name = %[5]q
portal_map = { "127.0.0.1:3260" = "%[1]s:%[4]d" }
`, p.cinder, cinderKeystonePort, cinderAPIPort, cinderPortalPort, p.name)
}

// cinderBackendMain is `vmguest cinder-backend ADDR`: it adds the cinder
// backend at ADDR to the agent's configuration and restarts the agent's
// `blockvol serve` with it (the multi-host test does so once, before its
// cinder scenarios, so that the others never depend on OpenStack).
func cinderBackendMain(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: vmguest cinder-backend ADDR")
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := restartWithCinder(ctx, args[0]); err != nil {
		fmt.Fprintf(os.Stderr, "%v\nblockvol log (last 30 lines):\n%s\n", err, tail("/run/vmtest/blockvol.log", 30))
		return 1
	}
	return 0
}

func restartWithCinder(ctx context.Context, addr string) error {
	p := readAgentParams()
	p.cinder = addr
	b, err := os.ReadFile(agentServePID)
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("%s: %w", agentServePID, err)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	// The agent's control process reaps it (cmd.Wait in startAgentServe).
	if err := waitFor(ctx, time.Minute, 50*time.Millisecond, "blockvol serve to stop", func() (bool, error) {
		return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH), nil
	}); err != nil {
		return err
	}
	if err := os.Remove(agentSocket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.WriteFile(agentConfig, []byte(agentConfigTOML(p)), 0o600); err != nil {
		return err
	}
	return startAgentServe(ctx)
}
