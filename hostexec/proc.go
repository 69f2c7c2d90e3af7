package hostexec

import (
	"context"
	"os/exec"
	"syscall"
	"time"
)

// waitDelay bounds how long Wait goes on after a program was killed for
// its deadline: a child of the program that escaped the kill and still
// holds its stdout or stderr cannot keep the call past the deadline.
const waitDelay = 500 * time.Millisecond

// command returns an exec.Cmd whose program dies with this process and
// whose whole process group dies with ctx:
//   - Pdeathsig: the kernel sends SIGKILL to the program when this process
//     dies (kill -9 of the plugin), so no losetup or mkfs outlives the
//     plugin and finishes behind the back of its recovery;
//   - Setpgid and Cancel: the program leads a process group of its own, and
//     when ctx ends the whole group is killed, not only its leader (a shell
//     wrapper and the program it started, say);
//   - WaitDelay: see waitDelay.
//
// A nil ctx makes a command that is not bound to a context (Hold).
func command(ctx context.Context, name string, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	if ctx == nil {
		cmd = exec.Command(name, args...)
	} else {
		cmd = exec.CommandContext(ctx, name, args...)
		cmd.Cancel = func() error { return killGroup(cmd) }
		cmd.WaitDelay = waitDelay
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	return cmd
}

// killGroup sends SIGKILL to the process group cmd leads.
func killGroup(cmd *exec.Cmd) error {
	if cmd.Process == nil {
		return nil
	}
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil {
		return cmd.Process.Kill()
	}
	return nil
}
