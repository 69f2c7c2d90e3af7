package main

import (
	"context"
	"net"
	"sync"
)

// go-plugins-helpers' server has no graceful Shutdown: we close its
// listener and wait for the driver's calls in flight (Driver.Wait). That
// leaves a short window in which a call has returned but its answer is not
// yet written. connTracker closes it: it counts the connections that have
// received a request and not yet answered it, so that the process exits
// only once every answer has been written. Idle keep-alive connections do
// not count.
type connTracker struct {
	net.Listener

	mu      sync.Mutex
	pending int           // connections with a request not yet answered
	idle    chan struct{} // closed when pending drops to 0
}

func trackConns(l net.Listener) *connTracker {
	t := &connTracker{Listener: l, idle: make(chan struct{})}
	close(t.idle)
	return t
}

// Accept implements net.Listener.
func (t *connTracker) Accept() (net.Conn, error) {
	c, err := t.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &trackedConn{Conn: c, t: t}, nil
}

func (t *connTracker) add(delta int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pending == 0 && delta > 0 {
		t.idle = make(chan struct{})
	}
	t.pending += delta
	if t.pending == 0 {
		close(t.idle)
	}
}

// drain waits until no connection has a request left unanswered.
func (t *connTracker) drain(ctx context.Context) error {
	t.mu.Lock()
	idle := t.idle
	t.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// trackedConn follows one HTTP/1.1 server connection: bytes read start a
// request; it is answered once something was written and the server reads
// again (net/http reads the next request only after flushing the whole
// answer; its background read during the handler comes before any write),
// or the connection is closed.
type trackedConn struct {
	net.Conn
	t *connTracker

	mu      sync.Mutex
	pending bool
	wrote   bool
	closed  bool
}

func (c *trackedConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	if c.pending && c.wrote {
		c.pending = false
		c.t.add(-1)
	}
	c.mu.Unlock()
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.mu.Lock()
		if !c.pending && !c.closed {
			c.pending, c.wrote = true, false
			c.t.add(1)
		}
		c.mu.Unlock()
	}
	return n, err
}

func (c *trackedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if n > 0 {
		c.mu.Lock()
		c.wrote = true
		c.mu.Unlock()
	}
	return n, err
}

func (c *trackedConn) Close() error {
	c.mu.Lock()
	if c.pending {
		c.pending = false
		c.t.add(-1)
	}
	c.closed = true
	c.mu.Unlock()
	return c.Conn.Close()
}
