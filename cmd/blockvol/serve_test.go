package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/volume"
)

// TestSocketActivation starts blockvol as systemd does for blockvol.socket:
// the listening socket is inherited as fd 3 with LISTEN_FDS=1 and
// LISTEN_PID=<blockvol's pid>. blockvol serves through it, and after
// SIGTERM the socket file is still there (systemd owns it) and a second
// instance serves through the same socket.
func TestSocketActivation(t *testing.T) {
	dir := t.TempDir()
	cfgPath, sock := testConfig(t, dir, "")
	// The test plays systemd: it binds and keeps the socket.
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ul := l.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	defer ul.Close()
	f, err := ul.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	for i, vol := range []string{"first", "second"} {
		logPath := filepath.Join(dir, "blockvol.log")
		c := startBlockvol(t, logPath, []*os.File{f}, nil, "serve", "--config", cfgPath)
		waitAnswer(t, sock, c)
		cli := newPluginClient(sock)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := cli.call(ctx, "VolumeDriver.Create", volume.CreateRequest{Name: vol, Options: map[string]string{"size": "64M"}}, nil); err != nil {
			t.Fatalf("instance %d: create through the activated socket: %v", i+1, err)
		}
		var list volume.ListResponse
		if err := cli.call(ctx, "VolumeDriver.List", struct{}{}, &list); err != nil {
			t.Fatal(err)
		}
		cancel()
		if len(list.Volumes) != i+1 {
			t.Fatalf("instance %d lists %d volumes, want %d", i+1, len(list.Volumes), i+1)
		}
		if _, err := os.Stat(filepath.Join(dir, "loop", vol+".img")); err != nil {
			t.Fatalf("the real plugin did not create the image: %v", err)
		}
		if err := c.stop(t); err != nil {
			t.Fatalf("instance %d exited with %v after SIGTERM", i+1, err)
		}
		fi, err := os.Lstat(sock)
		if err != nil || fi.Mode()&os.ModeSocket == 0 {
			t.Fatalf("instance %d removed systemd's socket file at exit (%v)", i+1, err)
		}
		logText, _ := os.ReadFile(logPath)
		if !strings.Contains(string(logText), "activated=true") {
			t.Fatalf("instance %d did not log activated=true:\n%s", i+1, logText)
		}
	}
}

// TestOwnSocketWithoutActivation: without LISTEN_FDS blockvol binds its own
// socket (mode 0660) and removes it at SIGTERM.
func TestOwnSocketWithoutActivation(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("binding the plugin socket chowns it to root")
	}
	dir := t.TempDir()
	cfgPath, sock := testConfig(t, dir, "")
	c := startBlockvol(t, filepath.Join(dir, "blockvol.log"), nil, nil, "serve", "--config", cfgPath)
	waitAnswer(t, sock, c)
	fi, err := os.Lstat(sock)
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket %v mode %v; want 0660", err, fi.Mode())
	}
	if err := c.stop(t); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("own socket left behind after SIGTERM (%v)", err)
	}
}

// TestActivationRejectsTwoSockets: a socket unit with two ListenStream=
// lines is a configuration error, said at start.
func TestActivationRejectsTwoSockets(t *testing.T) {
	dir := t.TempDir()
	cfgPath, _ := testConfig(t, dir, "")
	var files []*os.File
	for _, name := range []string{"a.sock", "b.sock"} {
		l, err := net.Listen("unix", filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		f, err := l.(*net.UnixListener).File()
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files = append(files, f)
	}
	logPath := filepath.Join(dir, "blockvol.log")
	c := startBlockvol(t, logPath, files, nil, "serve", "--config", cfgPath)
	select {
	case <-c.done:
	case <-time.After(20 * time.Second):
		t.Fatal("blockvol did not exit")
	}
	logText, _ := os.ReadFile(logPath)
	if c.err == nil || !strings.Contains(string(logText), "systemd passed 2 sockets; blockvol.socket must have exactly one ListenStream=") {
		t.Fatalf("exit %v, log:\n%s", c.err, logText)
	}
}

// TestSIGTERMWaitsForInFlight: a signal stops new connections at once, but
// the process ends only after the call in flight has finished and its
// answer reached the client.
func TestSIGTERMWaitsForInFlight(t *testing.T) {
	drv := newFakeDriver()
	drv.gate, drv.started = make(chan struct{}), make(chan struct{}, 1)
	sock := filepath.Join(t.TempDir(), "p.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	sigs := make(chan os.Signal, 1)
	served := make(chan error, 1)
	go func() { served <- serveUntilSignal(l, drv, sigs, time.Minute, slog.New(slog.DiscardHandler)) }()

	created := make(chan error, 1)
	go func() {
		created <- newPluginClient(sock).call(context.Background(), "VolumeDriver.Create", volume.CreateRequest{Name: "slow"}, nil)
	}()
	<-drv.started
	sigs <- syscall.SIGTERM

	// New connections are refused while the slow create goes on...
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("still accepting connections 10 s after SIGTERM")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// ... and the server has not returned.
	select {
	case err := <-served:
		t.Fatalf("server returned (%v) while a create was in flight", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(drv.gate)
	if err := <-created; err != nil {
		t.Fatalf("the in-flight create did not complete: %v", err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("server: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server did not return after the in-flight call ended")
	}
	if _, ok := drv.vols["slow"]; !ok {
		t.Fatal("the create in flight was not carried out")
	}
}

// TestSIGTERMGraceEnds: a call that outlives the grace makes serve return
// an error naming the grace, rather than hang.
func TestSIGTERMGraceEnds(t *testing.T) {
	drv := newFakeDriver()
	drv.gate, drv.started = make(chan struct{}), make(chan struct{}, 1)
	defer close(drv.gate)
	sock := filepath.Join(t.TempDir(), "p.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	sigs := make(chan os.Signal, 1)
	served := make(chan error, 1)
	go func() {
		served <- serveUntilSignal(l, drv, sigs, 200*time.Millisecond, slog.New(slog.DiscardHandler))
	}()
	go func() {
		_ = newPluginClient(sock).call(context.Background(), "VolumeDriver.Create", volume.CreateRequest{Name: "stuck"}, nil)
	}()
	<-drv.started
	sigs <- syscall.SIGINT
	select {
	case err := <-served:
		if err == nil || !strings.Contains(err.Error(), "operations still running after 200ms") {
			t.Fatalf("serve = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve ignored its grace")
	}
}

// TestSIGTERMClosesIdleAndHalfSentConnections: on a signal, connections
// without a call in progress (idle, or still sending their request) are
// closed at once; they never hold the stopping plugin for its grace.
func TestSIGTERMClosesIdleAndHalfSentConnections(t *testing.T) {
	drv := newFakeDriver()
	sock := filepath.Join(t.TempDir(), "p.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	sigs := make(chan os.Signal, 1)
	served := make(chan error, 1)
	go func() { served <- serveUntilSignal(l, drv, sigs, time.Hour, slog.New(slog.DiscardHandler)) }()

	// A keep-alive connection that made one call and is idle now.
	idleConn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer idleConn.Close()
	if _, err := idleConn.Write([]byte("POST /VolumeDriver.List HTTP/1.1\r\nHost: p\r\nContent-Length: 2\r\n\r\n{}")); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(idleConn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("first call on the keep-alive connection: %v %v", resp, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	conns := []net.Conn{idleConn}
	for _, partial := range []string{
		"", // connected, sent nothing
		"POST /VolumeDriver.Get HTTP/1.1\r\nHost: p\r\n",                                         // half the headers
		"POST /VolumeDriver.Create HTTP/1.1\r\nHost: p\r\nContent-Length: 100\r\n\r\n{\"Name\":", // half the body
	} {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte(partial)); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// The server has accepted them all once it answers a call made after.
	if err := newPluginClient(sock).call(context.Background(), "VolumeDriver.Create", volume.CreateRequest{Name: "last"}, nil); err != nil {
		t.Fatal(err)
	}
	sigs <- syscall.SIGTERM
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("idle or half-sent connections kept the stopping plugin alive")
	}
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		r := io.Reader(c)
		if i == 0 {
			r = br
		}
		if n, err := r.Read(make([]byte, 512)); err != io.EOF {
			t.Errorf("connection %d: read %d bytes, %v; want it closed", i, n, err)
		}
	}
	if drv.calls[len(drv.calls)-1] != "create last" {
		t.Errorf("calls %v: a half-sent request reached the driver", drv.calls)
	}
}

// TestSecondSignalForcesExit: an operator who signals twice does not wait
// for the call in flight.
func TestSecondSignalForcesExit(t *testing.T) {
	drv := newFakeDriver()
	drv.gate, drv.started = make(chan struct{}), make(chan struct{}, 1)
	defer close(drv.gate)
	sock := filepath.Join(t.TempDir(), "p.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	sigs := make(chan os.Signal, 1)
	served := make(chan error, 1)
	go func() { served <- serveUntilSignal(l, drv, sigs, time.Minute, slog.New(slog.DiscardHandler)) }()
	go func() {
		_ = newPluginClient(sock).call(context.Background(), "VolumeDriver.Create", volume.CreateRequest{Name: "stuck"}, nil)
	}()
	<-drv.started
	sigs <- syscall.SIGTERM
	sigs <- syscall.SIGINT
	select {
	case err := <-served:
		if err == nil || !strings.Contains(err.Error(), "a second signal ended the wait") {
			t.Fatalf("serve = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a second signal did not end the wait")
	}
}
