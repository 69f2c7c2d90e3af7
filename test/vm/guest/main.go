// Command guest is the test driver inside the blockvol test VM (see
// test/vm). It runs as a child of the initramfs's /init, sets up the guest
// (loopback, kernel modules, udev, tgtd, iscsid), runs the scenarios the
// kernel command line selects and reports them as VMTEST lines on the
// console. Its exit status is the run's verdict; /init passes it to qemu
// through isa-debug-exit by running `vmguest exit N`.
//
// Kernel parameters read:
//
//	vmtest.mode=test|bench|csi  which scenario set (default test); agent:
//	                         one agent of the multi-host tests (agent.go)
//	vmtest.run=REGEXP        only scenarios whose name matches
//	vmtest.skip=REGEXP       not the scenarios whose name matches
//	vmtest.benchn=N          iterations of the bench scenarios (default 5)
//
// Installed as links in /opt/vmtest/hookbin, it is a kill hook instead
// (hook.go).
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

func main() {
	// Called through a link in hookDir (the plugin finds it on its PATH).
	if name := filepath.Base(os.Args[0]); name != "vmguest" {
		if _, err := os.Lstat(filepath.Join(hookDir, name)); err == nil {
			os.Exit(hookMain(name, os.Args[1:]))
		}
	}
	if len(os.Args) == 3 && os.Args[1] == "exit" {
		n, _ := strconv.Atoi(os.Args[2])
		os.Exit(debugExit(n))
	}
	if len(os.Args) >= 2 {
		switch os.Args[1] {
		case "writer":
			os.Exit(writerMain(os.Args[2:]))
		case "records":
			os.Exit(recordsMain(os.Args[2:]))
		case "cinder-backend":
			os.Exit(cinderBackendMain(os.Args[2:]))
		case "login":
			os.Exit(loginMain(os.Args[2:]))
		}
	}
	os.Exit(runAll())
}

// params are the vmtest.* kernel parameters.
type params struct {
	mode      string
	run, skip *regexp.Regexp
	benchN    int
}

func readParams() (params, error) {
	p := params{mode: "test", benchN: 5}
	b, _ := os.ReadFile("/proc/cmdline")
	for _, f := range strings.Fields(string(b)) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "vmtest.mode":
			p.mode = v
		case "vmtest.run", "vmtest.skip":
			re, err := regexp.Compile(v)
			if err != nil {
				return p, fmt.Errorf("%s: %w", k, err)
			}
			if k == "vmtest.run" {
				p.run = re
			} else {
				p.skip = re
			}
		case "vmtest.benchn":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return p, fmt.Errorf("vmtest.benchn=%q", v)
			}
			p.benchN = n
		}
	}
	return p, nil
}

func runAll() int {
	r := newReporter()
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	r.line("INIT %s %s", readUptime(), strings.TrimSpace(string(kernel)))
	p, err := readParams()
	if err != nil {
		r.line("FAIL setup 0s %v", err)
		return 1
	}
	os.MkdirAll("/run/vmtest", 0o755)
	var all []scenario
	switch p.mode {
	case "agent":
		return runAgent(r)
	case "test":
		all = testScenarios()
	case "bench":
		all = benchScenarios(p.benchN)
	case "csi":
		all = csiScenarios()
	default:
		r.line("FAIL setup 0s unknown vmtest.mode %q", p.mode)
		return 1
	}
	var selected []scenario
	names := []string{"setup"}
	for _, sc := range all {
		if (p.run == nil || p.run.MatchString(sc.name)) && (p.skip == nil || !p.skip.MatchString(sc.name)) {
			selected = append(selected, sc)
			names = append(names, sc.name)
		}
	}
	r.line("PLAN %s", strings.Join(names, " "))
	ctx := context.Background()

	r.runScenario(ctx, scenario{name: "setup", timeout: 2 * time.Minute, run: setupGuest})
	if r.fail > 0 {
		for _, sc := range selected {
			r.skip++
			r.line("SKIP %s the guest setup failed", sc.name)
		}
	} else {
		for _, sc := range selected {
			r.runScenario(ctx, sc)
		}
	}
	r.line("DONE %d %d %d %s", r.pass, r.fail, r.skip, secs(time.Since(r.start)))
	if r.fail > 0 {
		return 1
	}
	return 0
}

func readUptime() string {
	b, _ := os.ReadFile("/proc/uptime")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "0"
	}
	return f[0]
}

// testScenarios is the default run.
func testScenarios() []scenario {
	var out []scenario
	out = append(out, scenario{name: "iscsi-initiator", timeout: 3 * time.Minute, run: scenarioInitiator})
	for _, b := range []*backendKind{loopBackend(), targetBackend()} {
		out = append(out, backendScenarios(b)...)
		if b.name == "loop" {
			out = append(out, scenario{name: "loop-mount-while-detach-pending", run: loopPendingDetach})
		}
	}
	return append(out,
		scenario{name: "doctor", run: doctorScenario},
		scenario{name: "leak-check", run: leakCheck})
}

// benchScenarios measure; they assert little.
func benchScenarios(n int) []scenario {
	return []scenario{
		{name: "bench-iscsi-login", timeout: 5 * time.Minute, run: func(s *S) error { return benchLogin(s, n) }},
		{name: "bench-iscsitarget-create-mount", timeout: 5 * time.Minute, run: func(s *S) error { return benchCreateMount(s, targetBackend(), n) }},
		{name: "bench-loop-create-mount", timeout: 5 * time.Minute, run: func(s *S) error { return benchCreateMount(s, loopBackend(), n) }},
	}
}
