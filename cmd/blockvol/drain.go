package main

import (
	"context"
	"net"
	"net/http"
	"sync"
)

// callTracker follows the plugin's connections so that a shutdown waits for
// the calls in progress only. A call is in progress from the moment its
// request has been read whole (plugin.Handler's Begin) until its answer
// has been written (net/http marks the connection idle) or the connection
// closes. On stop, every other connection — idle, or still sending its
// request — is closed at once, and so is each busy one as its call ends:
// a client that sends half a request cannot hold a stopping plugin.
type callTracker struct {
	mu       sync.Mutex
	conns    map[net.Conn]bool // open connections; true while a call runs
	calls    int
	idle     chan struct{} // closed while calls == 0
	stopping bool
}

func newCallTracker() *callTracker {
	t := &callTracker{conns: map[net.Conn]bool{}, idle: make(chan struct{})}
	close(t.idle)
	return t
}

type connKey struct{}

// connContext is http.Server.ConnContext: it lets begin find a request's
// connection.
func (t *callTracker) connContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// connState is http.Server.ConnState.
func (t *callTracker) connState(c net.Conn, s http.ConnState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch s {
	case http.StateNew:
		if t.stopping {
			c.Close()
			return
		}
		t.conns[c] = false
	case http.StateIdle:
		t.end(c)
		if t.stopping {
			c.Close()
		}
	case http.StateClosed, http.StateHijacked:
		t.end(c)
		delete(t.conns, c)
	}
}

// begin marks the call of r in progress. It returns false once the plugin
// is stopping: the call is not made.
func (t *callTracker) begin(r *http.Request) bool {
	c, _ := r.Context().Value(connKey{}).(net.Conn)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopping || c == nil {
		return false
	}
	if busy, open := t.conns[c]; open && !busy {
		t.conns[c] = true
		if t.calls == 0 {
			t.idle = make(chan struct{})
		}
		t.calls++
	}
	return true
}

// end marks the call on c done, if one ran. The caller holds t.mu.
func (t *callTracker) end(c net.Conn) {
	if !t.conns[c] {
		return
	}
	t.conns[c] = false
	t.calls--
	if t.calls == 0 {
		close(t.idle)
	}
}

// stop closes every connection without a call in progress (the others
// close as their call ends) and returns a channel closed once no call is
// in progress.
func (t *callTracker) stop() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stopping = true
	for c, busy := range t.conns {
		if !busy {
			c.Close()
		}
	}
	return t.idle
}
