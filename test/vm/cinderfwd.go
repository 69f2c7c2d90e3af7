package vm

import (
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Forwarder brings a service of this machine's loopback (the OpenStack
// test services: Keystone, Cinder and the tgtd Cinder exports on) to the
// guests, which reach only the test's network namespace: it listens on an
// address inside the namespace and relays every connection to an address
// on 127.0.0.1 of the test's own namespace. It runs in the test process,
// so it ends with it.
type Forwarder struct {
	From, To string
	l        net.Listener
	mu       sync.Mutex
	conns    map[net.Conn]bool
	closed   bool
	wg       sync.WaitGroup
}

// StartForwarder listens on from inside network namespace ns and relays
// each connection to to.
func StartForwarder(ns, from, to string) (*Forwarder, error) {
	l, err := listenInNetns(ns, from)
	if err != nil {
		return nil, fmt.Errorf("forwarder %s -> %s: %w", from, to, err)
	}
	f := &Forwarder{From: from, To: to, l: l, conns: map[net.Conn]bool{}}
	f.wg.Add(1)
	go f.serve()
	return f, nil
}

// listenInNetns opens a TCP listener in namespace ns: the socket is made
// by an OS thread that entered the namespace and then returns to this
// process's namespace before it is unlocked. The thread must not end: the
// harness starts tgtd, sshd and qemu with Pdeathsig, which the kernel
// fires when the forking *thread* exits, and any thread may have forked
// them (a locked goroutine that ends takes its thread with it: that killed
// the namespace's tgtd and sshd once the cinder forwarders closed). Only
// when the way back fails is the thread left locked, to end with its
// goroutine. The listener itself works from any thread.
func listenInNetns(ns, addr string) (net.Listener, error) {
	type result struct {
		l   net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer home.Close()
		fd, err := os.Open("/run/netns/" + ns)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer fd.Close()
		if err := unix.Setns(int(fd.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("enter namespace %s: %w", ns, err)}
			return
		}
		l, err := net.Listen("tcp", addr)
		if unix.Setns(int(home.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		ch <- result{l, err}
	}()
	r := <-ch
	return r.l, r.err
}

func (f *Forwarder) serve() {
	defer f.wg.Done()
	for {
		c, err := f.l.Accept()
		if err != nil {
			return
		}
		f.wg.Add(1)
		go f.relay(c)
	}
}

// track adds (or removes) a connection Close must cut; false: closed.
func (f *Forwarder) track(c net.Conn, add bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !add {
		delete(f.conns, c)
		return true
	}
	if f.closed {
		return false
	}
	f.conns[c] = true
	return true
}

func (f *Forwarder) relay(in net.Conn) {
	defer f.wg.Done()
	defer in.Close()
	if !f.track(in, true) {
		return
	}
	defer f.track(in, false)
	out, err := net.DialTimeout("tcp", f.To, 10*time.Second)
	if err != nil {
		return // the guest sees its connection closed, as with a dead service
	}
	defer out.Close()
	if !f.track(out, true) {
		return
	}
	defer f.track(out, false)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		io.Copy(dst, src)
		// Pass the end of one direction on; the other may still flow.
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(out, in)
	go pipe(in, out)
	<-done
	<-done
}

// Close stops listening and cuts every relayed connection.
func (f *Forwarder) Close() {
	f.mu.Lock()
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.l.Close()
	f.wg.Wait()
}

// startForwarders starts one forwarder per {from, to} pair in ns; on an
// error it closes those already started.
func startForwarders(ns string, pairs [][2]string) ([]*Forwarder, error) {
	var fs []*Forwarder
	for _, p := range pairs {
		f, err := StartForwarder(ns, p[0], p[1])
		if err != nil {
			closeForwarders(fs)
			return nil, err
		}
		fs = append(fs, f)
	}
	return fs, nil
}

func closeForwarders(fs []*Forwarder) {
	for _, f := range fs {
		f.Close()
	}
}
