package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// reporter writes the VMTEST protocol (see test/vm/doc.go) to the console.
type reporter struct {
	mu               sync.Mutex
	pass, fail, skip int
	start            time.Time
}

func newReporter() *reporter { return &reporter{start: time.Now()} }

// line writes one "VMTEST ..." record; newlines in the text are folded.
func (r *reporter) line(format string, a ...any) {
	s := oneLine(fmt.Sprintf(format, a...))
	r.mu.Lock()
	defer r.mu.Unlock()
	os.Stdout.WriteString("VMTEST " + s + "\n")
}

// detail writes diagnostic lines, indented, outside the protocol.
func (r *reporter) detail(title, text string) {
	text = strings.TrimRight(text, "\n")
	if text == "" {
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "    ---- %s\n", title)
	for _, l := range strings.Split(text, "\n") {
		b.WriteString("    | " + l + "\n")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	os.Stdout.WriteString(b.String())
}

func oneLine(s string) string {
	s = strings.TrimSpace(s)
	s = strings.ReplaceAll(s, "\r", "")
	return strings.ReplaceAll(s, "\n", " ⏎ ")
}

func secs(d time.Duration) string { return fmt.Sprintf("%.3fs", d.Seconds()) }

// errSkip ends a scenario as skipped.
type errSkip struct{ reason string }

func (e errSkip) Error() string { return "skip: " + e.reason }

func skipf(format string, a ...any) error { return errSkip{fmt.Sprintf(format, a...)} }

// S is the context of one running scenario.
type S struct {
	name     string
	r        *reporter
	ctx      context.Context
	failed   bool
	cleanups []func()
	// diag lists functions that print diagnostics when the scenario fails
	// (plugin logs, ...).
	diag []func()
}

// Step runs fn as one named step and reports its duration. A failure
// returns the error prefixed with the step's description.
func (s *S) Step(desc string, fn func() error) error {
	t0 := time.Now()
	err := fn()
	d := time.Since(t0)
	if err != nil {
		var sk errSkip
		if errors.As(err, &sk) {
			return err
		}
		s.r.line("STEP %s %s %s -> FAILED", s.name, secs(d), desc)
		return fmt.Errorf("%s: %w", desc, err)
	}
	s.r.line("STEP %s %s %s", s.name, secs(d), desc)
	return nil
}

// Note reports a fact as a zero-length step (what an error said, which
// device was found, ...).
func (s *S) Note(format string, a ...any) {
	s.r.line("STEP %s 0s %s", s.name, fmt.Sprintf(format, a...))
}

// Errorf reports a failed check; the scenario goes on and fails at its end.
func (s *S) Errorf(format string, a ...any) {
	s.failed = true
	s.r.line("ERROR %s %s", s.name, fmt.Sprintf(format, a...))
}

// Check reports err, if any, as a failed check.
func (s *S) Check(what string, err error) {
	if err != nil {
		s.Errorf("%s: %v", what, err)
	}
}

// Time reports a measurement.
func (s *S) Time(metric string, d time.Duration) {
	s.r.line("TIME %s %s %.3f", s.name, metric, d.Seconds())
}

// Cleanup registers fn to run when the scenario ends, last first.
func (s *S) Cleanup(fn func()) { s.cleanups = append(s.cleanups, fn) }

// OnFailure registers a diagnostics printer.
func (s *S) OnFailure(fn func()) { s.diag = append(s.diag, fn) }

// scenario is one named test run inside the guest.
type scenario struct {
	name    string
	timeout time.Duration
	run     func(s *S) error
}

// runScenario runs sc and reports its outcome.
func (r *reporter) runScenario(ctx context.Context, sc scenario) {
	timeout := sc.timeout
	if timeout == 0 {
		timeout = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	s := &S{name: sc.name, r: r, ctx: ctx}
	r.line("BEGIN %s", sc.name)
	t0 := time.Now()
	err := func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("panic: %v", p)
			}
		}()
		return sc.run(s)
	}()
	var sk errSkip
	skipped := errors.As(err, &sk)
	if (err != nil && !skipped) || s.failed {
		for _, d := range s.diag {
			d()
		}
		dumpSystem(r)
	}
	for i := len(s.cleanups) - 1; i >= 0; i-- {
		s.cleanups[i]()
	}
	hookFired() // disarm a hook that did not fire
	d := time.Since(t0)
	switch {
	case skipped && !s.failed:
		r.skip++
		r.line("SKIP %s %s", sc.name, sk.reason)
	case err != nil:
		r.fail++
		r.line("FAIL %s %s %v", sc.name, secs(d), err)
	case s.failed:
		r.fail++
		r.line("FAIL %s %s some checks failed (ERROR lines above)", sc.name, secs(d))
	default:
		r.pass++
		r.line("PASS %s %s", sc.name, secs(d))
	}
}
