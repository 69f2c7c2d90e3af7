package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blockvol/blockvol/internal/testenv"
)

// The VM tests need qemu and the kernel that test/vm/setup.sh fetches;
// they skip without them (fail with BLOCKVOL_NO_SKIP=1, as in CI), and in
// -short mode (make unit: no external tools). Environment:
//
//	BLOCKVOL_VM_RUN=REGEXP      run only the guest scenarios matching it
//	BLOCKVOL_VM_SKIP=REGEXP     leave out the guest scenarios matching it
//	BLOCKVOL_VM_TIMEOUT=8m      host deadline of one VM run (a hang guard)
//	BLOCKVOL_VM_KERNEL, BLOCKVOL_VM_QEMU, BLOCKVOL_VM_CACHE: see kernel.go
//
// Console logs are kept in <cache>/logs (the last logsKept runs).

const logsKept = 20

// requireVM skips when qemu or the kernel is missing.
func requireVM(tb testing.TB) (Kernel, string) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("the VM test boots qemu: not in -short mode")
	}
	k, err := FindKernel()
	if errors.Is(err, ErrMissing) {
		testenv.Skip(tb, "no VM kernel: "+err.Error())
	}
	if err != nil {
		tb.Fatal(err)
	}
	q, err := FindQEMU()
	if errors.Is(err, ErrMissing) {
		testenv.Skip(tb, "no qemu: "+err.Error())
	}
	if err != nil {
		tb.Fatal(err)
	}
	return k, q
}

// vmRun is one build and boot.
type vmRun struct {
	guest Guest
	res   *Result
}

// bootGuest builds the guest and runs it in mode ("test" or "bench").
func bootGuest(tb testing.TB, k Kernel, q, mode string, params ...string) (*vmRun, error) {
	timeout := 8 * time.Minute
	if s := os.Getenv("BLOCKVOL_VM_TIMEOUT"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			return nil, fmt.Errorf("BLOCKVOL_VM_TIMEOUT: %w", err)
		}
		timeout = d
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	dir := tb.TempDir()
	g, err := BuildGuest(ctx, GuestOptions{Kernel: k, Dir: dir})
	if err != nil {
		return nil, fmt.Errorf("build the guest: %w", err)
	}
	logPath, err := newLogPath(mode)
	if err != nil {
		return nil, err
	}
	params = append([]string{"vmtest.mode=" + mode}, params...)
	for env, param := range map[string]string{"BLOCKVOL_VM_RUN": "vmtest.run", "BLOCKVOL_VM_SKIP": "vmtest.skip"} {
		if re := os.Getenv(env); re != "" {
			if strings.ContainsAny(re, " \t\"") {
				return nil, fmt.Errorf("%s=%q: no blanks or quotes (it goes on the kernel command line)", env, re)
			}
			params = append(params, param+"="+re)
		}
	}
	res, err := Boot(ctx, BootConfig{QEMU: q, Kernel: k, Initrd: g.Initrd, Append: params, LogPath: logPath})
	if err != nil {
		return nil, err
	}
	return &vmRun{guest: g, res: res}, nil
}

// newLogPath names the console log of a new run in CacheDir()/logs, or,
// when that is not writable (not root), in a directory under os.TempDir.
func newLogPath(mode string) (string, error) {
	name := fmt.Sprintf("%s-%s.console.log", time.Now().Format("20060102-150405.000"), mode)
	var errs []error
	for _, dir := range []string{filepath.Join(CacheDir(), "logs"), filepath.Join(os.TempDir(), fmt.Sprintf("blockvol-vm-logs-%d", os.Getuid()))} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			errs = append(errs, err)
			continue
		}
		pruneLogs(dir)
		p := filepath.Join(dir, name)
		f, err := os.Create(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		f.Close()
		return p, nil
	}
	return "", fmt.Errorf("no directory for the console log: %w", errors.Join(errs...))
}

// pruneLogs keeps the newest logsKept-1 console logs.
func pruneLogs(dir string) {
	logs, _ := filepath.Glob(filepath.Join(dir, "*.console.log"))
	sort.Strings(logs)
	for len(logs) >= logsKept {
		os.Remove(logs[0])
		logs = logs[1:]
	}
}

// TestVM runs blockvol's real-kernel scenarios in one VM; each guest
// scenario is a subtest.
func TestVM(t *testing.T) {
	k, q := requireVM(t)
	start := time.Now()
	r, err := bootGuest(t, k, q, "test")
	if err != nil {
		t.Fatal(err)
	}
	res := r.res
	t.Logf("console log: %s", res.LogPath)
	t.Logf("timing: go build %s, initramfs %.0f MB packed in %s, qemu %s (%s, exit %d), test total %s",
		r.guest.GoBuild.Round(10*time.Millisecond), float64(r.guest.Size)/(1<<20), r.guest.Pack.Round(10*time.Millisecond),
		res.Wall.Round(10*time.Millisecond), res.Status, res.ExitCode, time.Since(start).Round(10*time.Millisecond))
	if ev, ok := res.Event("INIT"); ok {
		t.Logf("guest: kernel %s, /init reached at %.2f s uptime (host %.2f s after qemu start)", ev.Text, ev.Secs, ev.At.Seconds())
	}

	scenarios := res.Scenarios()
	if len(res.Plan()) == 0 {
		t.Fatalf("the guest never announced its scenarios (VM %s, qemu exit %d); console:\n%s",
			res.Status, res.ExitCode, tailLines(res.Console, 60))
	}
	wired := backendWired("iscsitarget")
	failed := false
	for _, sc := range scenarios {
		ok := t.Run(sc.Name, func(t *testing.T) {
			if wired && sc.Outcome == "SKIP" && strings.Contains(sc.Message, "no iscsitarget backend") {
				t.Errorf("cmd/blockvol wires the iscsitarget backend, yet the guest skipped: %s", sc.Message)
			}
			reportScenario(t, sc, res)
		})
		failed = failed || !ok
	}
	t.Log(timingTable(scenarios))
	done, hasDone := res.Event("DONE")
	switch {
	case res.Status == TimedOut:
		t.Errorf("the VM did not finish within its deadline (%s); console tail:\n%s", res.Wall.Round(time.Second), tailLines(res.Console, 40))
	case !hasDone:
		t.Errorf("the guest stopped before reporting DONE (VM %s, qemu exit %d); console tail:\n%s", res.Status, res.ExitCode, tailLines(res.Console, 40))
	case res.Status != Passed && !failed:
		t.Errorf("the guest reported %s (qemu exit %d) but no scenario failed: %v", res.Status, res.ExitCode, done.Fields)
	case res.Status == Passed && failed:
		t.Errorf("a scenario failed but the guest reported success")
	}
}

// backendWired reports whether cmd/blockvol's wiring names backend type
// typ: then its guest scenarios must run, never skip.
func backendWired(typ string) bool {
	root, err := moduleRoot()
	if err != nil {
		return false
	}
	b, err := os.ReadFile(filepath.Join(root, "cmd", "blockvol", "wire.go"))
	return err == nil && strings.Contains(string(b), `case "`+typ+`"`)
}

// reportScenario turns one guest scenario into a subtest's result.
func reportScenario(t *testing.T, sc *Scenario, res *Result) {
	for _, st := range sc.Steps {
		t.Logf("%7.3fs  %s", st.Secs, st.Text)
	}
	for _, e := range sc.Errors {
		t.Errorf("check failed: %s", e)
	}
	switch sc.Outcome {
	case "PASS":
	case "SKIP":
		t.Skip(sc.Message)
	case "FAIL":
		t.Errorf("FAIL after %.2fs: %s", sc.Secs, sc.Message)
		t.Logf("console of the scenario (%s):\n%s", res.LogPath, tailLines(sc.Console, 150))
	default:
		if sc.Began {
			t.Errorf("never finished (VM %s); console:\n%s", res.Status, tailLines(sc.Console, 80))
		} else {
			t.Errorf("never began (VM %s)", res.Status)
		}
	}
}

// timingTable summarizes the scenarios' durations and measurements.
func timingTable(scs []*Scenario) string {
	var b strings.Builder
	b.WriteString("guest timings (guest clock):\n")
	for _, sc := range scs {
		fmt.Fprintf(&b, "  %-36s %-4s %7.2fs", sc.Name, sc.Outcome, sc.Secs)
		var ms []string
		for _, tm := range sc.Times {
			ms = append(ms, fmt.Sprintf("%s=%.2fs", tm.Name, tm.Secs))
		}
		if len(ms) > 0 {
			b.WriteString("  " + strings.Join(ms, " "))
		}
		b.WriteString("\n")
	}
	return b.String()
}

func tailLines(lines []string, n int) string {
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// benchVM is the one VM run shared by the sub-benchmarks.
var benchVM struct {
	once sync.Once
	run  *vmRun
	err  error
}

// benchMetrics are the guest measurements reported by BenchmarkVM:
// sub-benchmark name -> scenario and TIME metric.
var benchMetrics = []struct{ name, scenario, metric string }{
	{"iscsi-login-to-device", "bench-iscsi-login", "login-to-device"},
	{"iscsi-logout", "bench-iscsi-login", "logout"},
	{"iscsitarget-create+mount", "bench-iscsitarget-create-mount", "create+mount"},
	{"iscsitarget-create", "bench-iscsitarget-create-mount", "create"},
	{"iscsitarget-mount-fresh", "bench-iscsitarget-create-mount", "mount-fresh"},
	{"iscsitarget-unmount", "bench-iscsitarget-create-mount", "unmount"},
	{"loop-create+mount", "bench-loop-create-mount", "create+mount"},
	{"loop-unmount", "bench-loop-create-mount", "unmount"},
}

// BenchmarkVM boots the guest once in bench mode (each measurement
// repeated 5 times inside it) and reports, per measurement, the median as
// ns/op with min and max: the time from the start of an iSCSI login to a
// usable block device, and Create+Mount of a fresh volume end to end, over
// iSCSI and, for comparison, over the loop backend. It never fails on time.
func BenchmarkVM(b *testing.B) {
	k, q := requireVM(b)
	benchVM.once.Do(func() {
		benchVM.run, benchVM.err = bootGuest(b, k, q, "bench", "vmtest.benchn=5")
	})
	if benchVM.err != nil {
		b.Fatal(benchVM.err)
	}
	res := benchVM.run.res
	b.Logf("console log: %s; qemu %s (%s)", res.LogPath, res.Wall.Round(10*time.Millisecond), res.Status)
	byName := map[string]*Scenario{}
	for _, sc := range res.Scenarios() {
		byName[sc.Name] = sc
	}
	for _, m := range benchMetrics {
		b.Run(m.name, func(b *testing.B) {
			sc := byName[m.scenario]
			if sc == nil {
				b.Fatalf("the guest did not run %s", m.scenario)
			}
			if sc.Outcome == "SKIP" {
				b.Skip(sc.Message)
			}
			if sc.Outcome != "PASS" {
				b.Fatalf("%s: %s %s", sc.Name, sc.Outcome, sc.Message)
			}
			var v []float64
			for _, tm := range sc.Times {
				if tm.Name == m.metric {
					v = append(v, tm.Secs)
				}
			}
			if len(v) == 0 {
				b.Fatalf("%s reported no %s", sc.Name, m.metric)
			}
			sort.Float64s(v)
			for range b.N {
			}
			b.ReportMetric(v[len(v)/2]*1e9, "ns/op")
			b.ReportMetric(v[0], "min-s")
			b.ReportMetric(v[len(v)-1], "max-s")
			b.ReportMetric(float64(len(v)), "samples")
		})
	}
}
