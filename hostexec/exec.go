// Package hostexec runs host programs (mkfs, blkid, losetup, iscsiadm, ...)
// behind a one-method interface, so that business code never builds an
// exec.Cmd itself and tests can script the exact argv of every call.
//
// Commands are run directly, never through a shell: arguments are passed as
// they are, so no value coming from a user can be interpreted as shell syntax.
package hostexec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// Runner runs one program to completion.
//
// Run returns the program's standard output. A program that ran and exited
// non-zero yields an *ExitError (test it with errors.As) carrying the exit
// code and the standard error text; a program that could not be started
// yields the start error, wrapped. When ctx ends first the program is killed
// and the error wraps ctx.Err().
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// ExitError reports a program that exited with a non-zero status.
type ExitError struct {
	Argv   []string
	Code   int
	Stderr string
}

func (e *ExitError) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	if msg == "" {
		return fmt.Sprintf("%s exited with status %d", e.Argv[0], e.Code)
	}
	return fmt.Sprintf("%s exited with status %d: %s", e.Argv[0], e.Code, msg)
}

// ExitCode returns the exit status carried by err, or -1 when err is not
// (and does not wrap) an *ExitError.
func ExitCode(err error) int {
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	return -1
}

// OS runs programs on this host with os/exec.
type OS struct {
	// Env, when non-nil, is the environment of every program run; nil
	// inherits the environment of this process.
	Env []string
}

// Run implements Runner.
func (o OS) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := command(ctx, name, args...)
	if o.Env != nil {
		cmd.Env = o.Env
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := cmd.Run()
	if err == nil || errors.Is(err, exec.ErrWaitDelay) && ctx.Err() == nil {
		// ErrWaitDelay: the program succeeded, but something it left
		// running still held its output (see waitDelay): its work is done.
		return stdout.Bytes(), nil
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return stdout.Bytes(), fmt.Errorf("%s: %w", name, ctxErr)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return stdout.Bytes(), &ExitError{
			Argv:   append([]string{name}, args...),
			Code:   ee.ExitCode(),
			Stderr: stderr.String(),
		}
	}
	return stdout.Bytes(), fmt.Errorf("run %s: %w", name, err)
}
