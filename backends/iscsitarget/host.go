package iscsitarget

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"

	"github.com/blockvol/blockvol/hostexec"
)

// Host runs programs on the iSCSI target host: this host (LocalHost) or
// another one reached over SSH (package sshhost). Programs get their
// arguments verbatim, never through a shell built from them.
type Host interface {
	// Run runs a program to completion, as hostexec.Runner does: a
	// non-zero exit is an *hostexec.ExitError carrying the code and the
	// standard error text.
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
	// Hold starts a program that holds something (the backend's lock)
	// for as long as its standard input stays open. It returns the first
	// line the program prints on standard output, once printed, and
	// release, which closes the program's standard input and waits for it
	// to exit. A program that exits before printing a line yields its
	// error as Run would. When ctx ends before the line arrives the
	// program is stopped and ctx's error returned; once the line is there
	// ctx no longer matters.
	Hold(ctx context.Context, name string, args ...string) (line string, release func() error, err error)
}

// LocalHost is the target host when it is this host: Run goes through a
// hostexec.Runner, Hold starts the program with os/exec.
type LocalHost struct {
	hostexec.Runner
}

// Hold implements Host.
func (h LocalHost) Hold(ctx context.Context, name string, args ...string) (string, func() error, error) {
	if err := ctx.Err(); err != nil {
		return "", nil, err
	}
	cmd := exec.Command(name, args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return "", nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("run %s: %w", name, err)
	}
	line, err := firstLine(ctx, stdout, func() { _ = cmd.Process.Kill() })
	if err != nil {
		stdin.Close()
		werr := cmd.Wait()
		if ctx.Err() != nil {
			return "", nil, fmt.Errorf("%s: %w", name, ctx.Err())
		}
		var ee *exec.ExitError
		if errors.As(werr, &ee) {
			return "", nil, &hostexec.ExitError{Argv: append([]string{name}, args...), Code: ee.ExitCode(), Stderr: stderr.String()}
		}
		if werr != nil {
			return "", nil, fmt.Errorf("run %s: %w", name, werr)
		}
		return "", nil, fmt.Errorf("%s exited without printing a line", name)
	}
	// Nothing more is read from stdout: drain it so that the program
	// never blocks writing.
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	release := func() error {
		stdin.Close()
		err := cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return &hostexec.ExitError{Argv: append([]string{name}, args...), Code: ee.ExitCode(), Stderr: stderr.String()}
		}
		return err
	}
	return line, release, nil
}

// firstLine reads one line from r, calling stop when ctx ends first.
func firstLine(ctx context.Context, r io.Reader, stop func()) (string, error) {
	type result struct {
		line string
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		line, err := bufio.NewReader(r).ReadString('\n')
		if err != nil && line != "" && err == io.EOF {
			err = nil
		}
		ch <- result{strings.TrimSuffix(line, "\n"), err}
	}()
	select {
	case res := <-ch:
		return res.line, res.err
	case <-ctx.Done():
		stop()
		<-ch
		return "", ctx.Err()
	}
}

// lockedBuffer is a bytes.Buffer safe for a writer and a reader in
// different goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
