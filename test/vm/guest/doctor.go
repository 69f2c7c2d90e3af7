package main

import (
	"encoding/json"
	"fmt"
	"os/exec"
)

// doctorScenario runs `blockvol doctor` on a real kernel with a plugin
// serving both backends: with iscsi_tcp loaded, iscsid running, an
// initiator name and tgtd answering, every check must be OK — a WARN or
// FAIL here is a wrong detection.
func doctorScenario(s *S) error {
	loop, target := loopBackend(), targetBackend()
	both := &backendKind{
		name: loop.name,
		tables: func(dir string) string {
			return loop.tables(dir) + "\n" + target.tables(dir)
		},
		setup: target.setup,
	}
	p, err := startBackendPlugin(s, both)
	if err != nil {
		return err
	}
	return s.Step("blockvol doctor --json: every check OK", func() error {
		out, err := exec.CommandContext(s.ctx, "/usr/bin/blockvol", "doctor", "--config", p.cfgPath, "--json").Output()
		var rep struct {
			Checks []struct{ Check, Status, Detail, Fix string }
		}
		if jerr := json.Unmarshal(out, &rep); jerr != nil {
			return fmt.Errorf("doctor (%v) printed no JSON report: %v: %q", err, jerr, out)
		}
		for _, c := range rep.Checks {
			if c.Status != "OK" {
				s.Errorf("doctor: %s %s: %s (fix: %s)", c.Status, c.Check, c.Detail, c.Fix)
			} else {
				s.Note("doctor: OK %s: %s", c.Check, c.Detail)
			}
		}
		if len(rep.Checks) == 0 {
			return fmt.Errorf("doctor reported no checks")
		}
		if err != nil && !s.failed {
			return fmt.Errorf("doctor exited with %v but reported no failure", err)
		}
		return nil
	})
}
