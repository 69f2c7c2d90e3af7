package plugin

import (
	"context"
	"fmt"
	"sync"
)

// volumeLocks serializes operations on one volume name while leaving other
// names free: a second caller on the same name waits for the first (it is
// not refused — Docker does not retry), until its context ends.
type volumeLocks struct {
	mu    sync.Mutex
	locks map[string]*volumeLock
}

type volumeLock struct {
	held chan struct{} // holds one token while the lock is taken
	refs int           // holders and waiters; the entry is dropped at 0
}

func newVolumeLocks() *volumeLocks {
	return &volumeLocks{locks: map[string]*volumeLock{}}
}

// lock takes the lock of name and returns its release function, or an
// error wrapping ErrBusy when ctx ends first.
func (l *volumeLocks) lock(ctx context.Context, name string) (func(), error) {
	l.mu.Lock()
	vl, ok := l.locks[name]
	if !ok {
		vl = &volumeLock{held: make(chan struct{}, 1)}
		l.locks[name] = vl
	}
	vl.refs++
	l.mu.Unlock()

	select {
	case vl.held <- struct{}{}:
		return func() {
			<-vl.held
			l.drop(name, vl)
		}, nil
	case <-ctx.Done():
		l.drop(name, vl)
		return nil, &userError{
			kind: ErrBusy,
			msg:  fmt.Sprintf("volume %q is busy: another operation on it did not finish in time (%v); try again", name, ctx.Err()),
			err:  ctx.Err(),
		}
	}
}

func (l *volumeLocks) drop(name string, vl *volumeLock) {
	l.mu.Lock()
	defer l.mu.Unlock()
	vl.refs--
	if vl.refs == 0 {
		delete(l.locks, name)
	}
}

// acquire validates a volume name and takes its lock.
func (d *Driver) acquire(ctx context.Context, name string) (func(), error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	return d.locks.lock(ctx, name)
}
