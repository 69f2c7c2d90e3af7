package hostexec

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// waitPidFile returns the pid a shell wrote to path, waiting for it.
func waitPidFile(t *testing.T, path string) int {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(10 * time.Second)
	for {
		if data, err := os.ReadFile(path); err == nil && strings.HasSuffix(string(data), "\n") {
			pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
			if err != nil {
				t.Fatalf("pid file %s: %v", path, err)
			}
			return pid
		}
		select {
		case <-deadline:
			t.Fatalf("no pid in %s", path)
		case <-tick.C:
		}
	}
}

// gone reports whether pid has exited (a zombie counts: it runs nothing).
func gone(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	// "pid (comm) S ...": the state follows the last ')'.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// waitGone waits up to 5 s for pid to exit and reports whether it did.
func waitGone(pid int) bool {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(5 * time.Second)
	for !gone(pid) {
		select {
		case <-deadline:
			return false
		case <-tick.C:
		}
	}
	return true
}

// A program killed for its deadline takes its children along, and one that
// escaped and holds the program's stdout cannot keep Run waiting.
func TestRunDeadlineKillsTheProgramsChildren(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	// The background sleep inherits the shell's stdout: before the fix,
	// killing the shell alone left Wait blocked on that pipe for 30 s.
	_, err := OS{}.Run(ctx, "sh", "-c", `sleep 30 & echo $! > `+pidFile+`; wait`)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run = %v, want the deadline", err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("Run returned %v after its 200ms deadline", el)
	}
	pid := waitPidFile(t, pidFile)
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	if !waitGone(pid) {
		t.Fatalf("the program's child %d outlived the deadline", pid)
	}
}

// Same for the Holder: stopping a program that has not printed its line
// yet stops its process group.
func TestHoldDeadlineKillsTheProgramsChildren(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	_, _, err := OS{}.Hold(ctx, "sh", "-c", `sleep 30 & echo $! > `+pidFile+`; wait`)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Hold = %v, want the deadline", err)
	}
	pid := waitPidFile(t, pidFile)
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	if !waitGone(pid) {
		t.Fatalf("the program's child %d outlived the deadline", pid)
	}
}

const helperEnv = "BLOCKVOL_HOSTEXEC_HELPER_PIDFILE"

// TestHelperRunsALongProgram is not a test: TestRunProgramDiesWithItsCaller
// runs the test binary with helperEnv set to make it a caller of Run that
// it then kills.
func TestHelperRunsALongProgram(t *testing.T) {
	pidFile := os.Getenv(helperEnv)
	if pidFile == "" {
		t.Skip("helper process only")
	}
	_, _ = OS{}.Run(context.Background(), "sh", "-c", `echo $$ > `+pidFile+`; exec sleep 30`)
}

// A program run by a process that is killed with SIGKILL dies with it: a
// losetup or mkfs must not finish behind the back of a restarted plugin.
func TestRunProgramDiesWithItsCaller(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "program.pid")
	caller := exec.Command(os.Args[0], "-test.run=^TestHelperRunsALongProgram$", "-test.count=1")
	caller.Env = append(os.Environ(), helperEnv+"="+pidFile)
	if err := caller.Start(); err != nil {
		t.Fatal(err)
	}
	pid := waitPidFile(t, pidFile)
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	if err := caller.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = caller.Wait()
	if !waitGone(pid) {
		t.Fatalf("program %d outlived its killed caller", pid)
	}
}

// A program that succeeds but leaves a child holding its output is done:
// Run returns its output without waiting for the child.
func TestRunDoesNotWaitForAChildHoldingTheOutput(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	start := time.Now()
	out, err := OS{}.Run(t.Context(), "sh", "-c", `sleep 30 & echo $! > `+pidFile+`; echo done`)
	pid := waitPidFile(t, pidFile)
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	if err != nil || string(out) != "done\n" {
		t.Fatalf("Run = %q, %v", out, err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("Run took %v: it waited for the child", el)
	}
}
