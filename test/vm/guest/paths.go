package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/iscsi"
)

// loginMain: `vmguest login IQN LUN PORTAL...` attaches LUN of target IQN
// through the given portals with blockvol's initiator at its defaults (the
// settings `blockvol serve` uses), then detaches it, and prints one JSON
// line: {"attach": SECONDS, "device": PATH, "detach": SECONDS}, or the
// attach error ({"error": ...}, exit status 1). The initiator's log goes to
// standard error. The multi-host tests time a login beside a dead portal
// with it (multihost_paths_test.go).
func loginMain(args []string) int {
	if len(args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: vmguest login IQN LUN PORTAL...")
		return 2
	}
	lun, err := strconv.Atoi(args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "LUN:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ini, err := iscsi.New(iscsi.Config{}, hostexec.OS{}, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	t := iscsi.Target{IQN: args[0], LUN: lun, Portals: args[2:]}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out := map[string]any{}
	rc := 0
	t0 := time.Now()
	dev, err := ini.Attach(ctx, t)
	out["attach"] = time.Since(t0).Seconds()
	if err != nil {
		out["error"] = err.Error()
		rc = 1
	} else {
		out["device"] = dev
	}
	t1 := time.Now()
	if err := ini.Detach(ctx, t); err != nil {
		out["detach_error"] = err.Error()
		rc = 1
	}
	out["detach"] = time.Since(t1).Seconds()
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
	return rc
}

// agentPathsTOML is the agent's second iscsitarget backend, "mpath": the
// same target host, reached through both of its addresses (portal and
// portals), with a pool and IQN prefix of its own so that its volumes and
// the "target" backend's never meet. Without vmtest.target2 there is none.
func agentPathsTOML(p agentParams) string {
	if p.target2 == "" {
		return ""
	}
	return fmt.Sprintf(`
[backends.mpath]
type = "iscsitarget"
host = "ssh://root@%s:22"
ssh_key = %q
known_hosts = %q
tgt_control_port = %s
portal = "%s:3260"
portals = ["%s:3260"]
iqn_prefix = "iqn.2024-01.test.bvmh.mpath"

[backends.mpath.pools]
default = %q
`, p.target, agentSSHDir+"/id", agentSSHDir+"/known_hosts", p.tgtctl, p.target, p.target2, p.pool+"/mpath")
}
