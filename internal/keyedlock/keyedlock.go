// Package keyedlock serializes work per key (a volume name, a target IQN)
// while leaving other keys free.
package keyedlock

import (
	"context"
	"sync"
)

// Map holds one lock per key. The zero Map is ready to use; it must not be
// copied after first use. An entry lives only while someone holds or waits
// for it, so the map does not grow with every key ever seen.
type Map struct {
	mu sync.Mutex
	m  map[string]*entry
}

type entry struct {
	held chan struct{} // holds one token while the lock is taken
	refs int           // holders and waiters; the entry is dropped at 0
}

// Lock takes the lock of key and returns its release function. A second
// caller on the same key waits for the first until ctx ends, and then gets
// ctx's error (unwrapped, so callers say what was busy).
func (l *Map) Lock(ctx context.Context, key string) (unlock func(), err error) {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[string]*entry{}
	}
	e := l.m[key]
	if e == nil {
		e = &entry{held: make(chan struct{}, 1)}
		l.m[key] = e
	}
	e.refs++
	l.mu.Unlock()

	// Do not take a free lock for a caller whose context already ended.
	if err := ctx.Err(); err != nil {
		l.drop(key, e)
		return nil, err
	}
	select {
	case e.held <- struct{}{}:
		return func() {
			<-e.held
			l.drop(key, e)
		}, nil
	case <-ctx.Done():
		l.drop(key, e)
		return nil, ctx.Err()
	}
}

func (l *Map) drop(key string, e *entry) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e.refs--
	if e.refs == 0 {
		delete(l.m, key)
	}
}

// Len reports how many keys are held or waited for (for tests).
func (l *Map) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}
