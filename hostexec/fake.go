package hostexec

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Call is one expected invocation of a Fake: the exact argv it must receive
// and what it answers.
type Call struct {
	Argv   []string
	Stdout string
	// Code, when non-zero, makes the call fail with an *ExitError.
	Code   int
	Stderr string
	// Err, when set, is returned as is (a start failure, a timeout).
	Err error
	// Do, when set, runs before the call answers (to create a file the real
	// program would have created, for instance).
	Do func()
}

// Fake is a scripted Runner for tests. Calls must arrive in the scripted
// order with exactly the scripted argv; anything else fails the test
// through the Fatalf function given to NewFake. Safe for concurrent use,
// but a script implies an order, so concurrent callers should not share one.
type Fake struct {
	mu     sync.Mutex
	t      TB
	script []Call
	next   int
}

// TB is the subset of testing.TB a Fake needs.
type TB interface {
	Helper()
	Errorf(format string, args ...any)
}

// NewFake returns a Fake expecting exactly the given calls, in order.
func NewFake(t TB, calls ...Call) *Fake {
	return &Fake{t: t, script: calls}
}

// Expect appends calls to the script.
func (f *Fake) Expect(calls ...Call) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.script = append(f.script, calls...)
}

// Run implements Runner.
func (f *Fake) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	argv := append([]string{name}, args...)
	if f.next >= len(f.script) {
		f.t.Helper()
		f.t.Errorf("hostexec.Fake: unexpected call %q (script has %d calls)", argv, len(f.script))
		return nil, fmt.Errorf("unexpected call %q", argv)
	}
	c := f.script[f.next]
	f.next++
	if !slices.Equal(argv, c.Argv) {
		f.t.Helper()
		f.t.Errorf("hostexec.Fake: call %d:\n got  %q\n want %q", f.next, argv, c.Argv)
		return nil, fmt.Errorf("unexpected call %q", argv)
	}
	if c.Do != nil {
		c.Do()
	}
	if c.Err != nil {
		return []byte(c.Stdout), c.Err
	}
	if c.Code != 0 {
		return []byte(c.Stdout), &ExitError{Argv: argv, Code: c.Code, Stderr: c.Stderr}
	}
	return []byte(c.Stdout), nil
}

// Done reports every scripted call that was never made.
func (f *Fake) Done() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t.Helper()
	for _, c := range f.script[f.next:] {
		f.t.Errorf("hostexec.Fake: expected call never made: %s", strings.Join(c.Argv, " "))
	}
}
