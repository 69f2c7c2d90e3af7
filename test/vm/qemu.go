package vm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// BootConfig configures one VM run.
type BootConfig struct {
	QEMU   string
	Kernel Kernel
	Initrd string
	// Append are extra kernel parameters (the guest driver reads
	// vmtest.* ones, see test/vm/guest).
	Append []string
	// CPUs and MemoryMB default to 2 and 1024.
	CPUs, MemoryMB int
	// LogPath receives the serial console, each line prefixed with the
	// host's elapsed seconds. Required.
	LogPath string
	// OnEvent, optional, is called for each VMTEST line as it arrives.
	OnEvent func(Event)
	// Netns, when set, runs qemu in that network namespace (through
	// `ip netns exec`), where the tap devices of Extra live.
	Netns string
	// Extra are more qemu arguments: network devices, a control serial
	// port, a monitor.
	Extra []string
}

// Status is how a VM run ended.
type Status string

const (
	Passed   Status = "passed"    // the guest reported success (qemu exit 1)
	Failed   Status = "failed"    // the guest reported failure (qemu exit 3)
	NoReport Status = "no-report" // the guest stopped without reporting (panic, poweroff)
	TimedOut Status = "timed-out" // the host's deadline killed qemu
)

// Result is what a VM run produced.
type Result struct {
	Status   Status
	ExitCode int // qemu's
	Events   []Event
	// Console holds every console line, host-stamped as in the log.
	Console []string
	Wall    time.Duration
	LogPath string
}

// Boot runs qemu until the guest powers off, reports through
// isa-debug-exit, or ctx ends (then qemu is killed and the status is
// TimedOut). Without cfg.Extra the VM has no network device: everything
// the guest does stays on its own 127.0.0.1. An error is returned only when qemu could not run
// at all.
func Boot(ctx context.Context, cfg BootConfig) (*Result, error) {
	if cfg.CPUs == 0 {
		cfg.CPUs = 2
	}
	if cfg.MemoryMB == 0 {
		cfg.MemoryMB = 1024
	}
	logf, err := os.Create(cfg.LogPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()

	appendLine := strings.Join(append([]string{"console=ttyS0", "panic=-1", "quiet", "loglevel=4"}, cfg.Append...), " ")
	args := []string{
		"-nodefaults", "-no-user-config",
		"-machine", "pc,accel=tcg", "-cpu", "max",
		"-smp", fmt.Sprint(cfg.CPUs), "-m", fmt.Sprint(cfg.MemoryMB),
		"-display", "none", "-serial", "stdio", "-no-reboot",
		"-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
		"-kernel", cfg.Kernel.Image(), "-initrd", cfg.Initrd,
		"-append", appendLine,
	}
	if len(cfg.Extra) == 0 {
		args = append(args, "-nic", "none")
	}
	args = append(args, cfg.Extra...)
	prog := cfg.QEMU
	if cfg.Netns != "" {
		// ip execs qemu: the process is qemu itself.
		args = append([]string{"netns", "exec", cfg.Netns, cfg.QEMU}, args...)
		prog = "ip"
	}
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Stdin = nil
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // dies with the test
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	cmd.Stderr = pw
	cmd.WaitDelay = 5 * time.Second

	res := &Result{LogPath: cfg.LogPath}
	fmt.Fprintf(logf, "# %s %s\n", prog, strings.Join(args, " "))
	start := time.Now()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		w := bufio.NewWriter(logf)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			el := time.Since(start)
			stamped := fmt.Sprintf("%7.2f %s", el.Seconds(), line)
			res.Console = append(res.Console, stamped)
			fmt.Fprintln(w, stamped)
			w.Flush()
			if ev, ok := ParseEvent(line); ok {
				ev.At = el
				ev.ConsoleIndex = len(res.Console) - 1
				res.Events = append(res.Events, ev)
				if cfg.OnEvent != nil {
					cfg.OnEvent(ev)
				}
			}
		}
		io.Copy(io.Discard, pr)
	}()
	if err := cmd.Start(); err != nil {
		pw.Close()
		wg.Wait()
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	werr := cmd.Wait()
	pw.Close()
	wg.Wait()
	res.Wall = time.Since(start)
	res.ExitCode = cmd.ProcessState.ExitCode()
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		res.Status = TimedOut
	case werr == nil:
		res.Status = NoReport
	case errors.As(werr, &ee) && res.ExitCode == 1:
		res.Status = Passed
	case errors.As(werr, &ee) && res.ExitCode == 3:
		res.Status = Failed
	case errors.As(werr, &ee):
		res.Status = NoReport
	default:
		return res, fmt.Errorf("qemu: %w", werr)
	}
	fmt.Fprintf(logf, "# qemu exit status %d (%s), host wall %.2f s\n", res.ExitCode, res.Status, res.Wall.Seconds())
	return res, nil
}
