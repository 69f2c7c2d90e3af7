// Package sema is a counting semaphore whose waits end with a context.
package sema

import "context"

// Sema lets at most its capacity of holders in at once. The zero value
// is unusable: make one with New.
type Sema chan struct{}

// New returns a semaphore of n turns.
func New(n int) Sema { return make(Sema, n) }

// Acquire waits for a turn, or until ctx ends (its error is returned and
// no turn is held).
func (s Sema) Acquire(ctx context.Context) error {
	select {
	case s <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Release gives back a turn taken by Acquire.
func (s Sema) Release() { <-s }
