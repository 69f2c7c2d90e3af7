package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// proc is a long-running child (dockerd, a plugin). Its stdout and stderr
// go to a log file, never to a pipe of the test binary: a pipe would keep
// `go test` waiting for its grandchildren. It runs in its own process group
// and dies with the test binary (Pdeathsig).
type proc struct {
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has been reaped
	waitErr error         // valid once done is closed
}

// startProc starts argv with output appended to logPath.
func startProc(argv []string, logPath string, environ []string) (*proc, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child holds its own copy
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin = nil
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = environ
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	p := &proc{cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits for the process to exit, at most d.
func (p *proc) wait(d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-p.done:
		return true
	case <-timer.C:
		return false
	}
}

// kill9 sends SIGKILL to the process alone (as a crash would: its children
// survive) and waits until it has been reaped.
func (p *proc) kill9() error {
	if p.exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	if !p.wait(10 * time.Second) {
		return fmt.Errorf("pid %d survived SIGKILL for 10s", p.pid())
	}
	return nil
}

// stop sends SIGTERM, waits up to grace, then SIGKILLs the process group.
func (p *proc) stop(grace time.Duration) error {
	if p.exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if p.wait(grace) {
		return nil
	}
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
	if !p.wait(10 * time.Second) {
		return fmt.Errorf("pid %d survived SIGKILL for 10s", p.pid())
	}
	return fmt.Errorf("%s (pid %d) ignored SIGTERM for %s and was killed", p.cmd.Path, p.pid(), grace)
}

// logTail returns the last n lines of the process log.
func (p *proc) logTail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// poll calls cond every interval until it returns true, the context ends,
// or dead is closed. It returns cond's last error when it never succeeded.
func poll(ctx context.Context, interval time.Duration, dead <-chan struct{}, cond func(context.Context) (bool, error)) error {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	var last error
	for {
		ok, err := cond(ctx)
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
			}
			return ctx.Err()
		case <-dead:
			return fmt.Errorf("process exited (last: %v)", last)
		case <-ticker.C:
		}
	}
}

// childEnv is the environment for helper programs: ours without DOCKER_*
// variables, with the sbin directories on PATH, plus extra.
func childEnv(extra ...string) []string {
	var out []string
	path := os.Getenv("PATH")
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "DOCKER_") || strings.HasPrefix(kv, "PATH=") {
			continue
		}
		out = append(out, kv)
	}
	for _, dir := range []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"} {
		if !strings.Contains(":"+path+":", ":"+dir+":") {
			path += ":" + dir
		}
	}
	out = append(out, "PATH="+strings.TrimPrefix(path, ":"))
	return append(out, extra...)
}

// runCmd runs a short host command and returns its stdout; the error
// carries stderr.
func runCmd(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = childEnv()
	var stdout, stderr strings.Builder
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return stdout.String(), &cmdError{argv: append([]string{name}, args...), stderr: stderr.String(), err: err}
	}
	return stdout.String(), nil
}

// cmdError is a command that failed; Error() includes its stderr, which is
// what a user would read.
type cmdError struct {
	argv   []string
	stderr string
	err    error
}

func (e *cmdError) Error() string {
	return fmt.Sprintf("%s: %v: %s", strings.Join(e.argv, " "), e.err, strings.TrimSpace(e.stderr))
}

func (e *cmdError) Unwrap() error { return e.err }

// stderrOf returns the stderr of a failed command, or err's text.
func stderrOf(err error) string {
	var ce *cmdError
	if errors.As(err, &ce) {
		return strings.TrimSpace(ce.stderr)
	}
	if err == nil {
		return ""
	}
	return err.Error()
}
