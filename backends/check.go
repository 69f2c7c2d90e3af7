package backends

import "context"

// Checker is implemented by backends that can tell whether they are usable
// from this host right now (a service reachable, credentials accepted, a
// directory writable). `blockvol doctor` runs it; it must be cheap and
// must not change anything.
type Checker interface {
	Check(ctx context.Context) error
}
