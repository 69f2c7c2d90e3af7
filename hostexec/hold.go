package hostexec

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
)

// Holder starts a program that holds something (a lock on a target host,
// say) for as long as its standard input stays open. Hold returns the first
// line the program prints on standard output, once printed, and release,
// which closes the program's standard input and waits for it to exit. A
// program that exits before printing a line yields its error as Run would.
// When ctx ends before the line arrives the program is stopped and ctx's
// error returned; once the line is there ctx no longer matters.
type Holder interface {
	Hold(ctx context.Context, name string, args ...string) (line string, release func() error, err error)
}

// Hold implements Holder.
func (o OS) Hold(ctx context.Context, name string, args ...string) (string, func() error, error) {
	if err := ctx.Err(); err != nil {
		return "", nil, err
	}
	cmd := command(nil, name, args...)
	if o.Env != nil {
		cmd.Env = o.Env
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return "", nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	var stderr SyncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("run %s: %w", name, err)
	}
	line, err := FirstLine(ctx, stdout, func() { _ = killGroup(cmd) })
	if err != nil {
		stdin.Close()
		werr := cmd.Wait()
		if ctx.Err() != nil {
			return "", nil, fmt.Errorf("%s: %w", name, ctx.Err())
		}
		var ee *exec.ExitError
		if errors.As(werr, &ee) {
			return "", nil, &ExitError{Argv: append([]string{name}, args...), Code: ee.ExitCode(), Stderr: stderr.String()}
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
			return &ExitError{Argv: append([]string{name}, args...), Code: ee.ExitCode(), Stderr: stderr.String()}
		}
		return err
	}
	return line, release, nil
}

// FirstLine reads one line from r (without its newline; a last line
// without one counts), calling stop when ctx ends first: stop must make r
// return, for instance by killing the program that writes it.
func FirstLine(ctx context.Context, r io.Reader, stop func()) (string, error) {
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

// SyncBuffer is a bytes.Buffer safe for a writer and a reader in
// different goroutines (a program's stderr read while it runs).
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *SyncBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *SyncBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Bytes returns a copy of the contents.
func (l *SyncBuffer) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.b.Bytes())
}
