package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
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

// TestDrainWaitsForAnswers: the connection tracker counts a request from
// its first byte until its answer is written, and not idle connections.
func TestDrainWaitsForAnswers(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	tr := trackConns(&oneConnListener{c: a})
	c, err := tr.Accept()
	if err != nil {
		t.Fatal(err)
	}
	idle := func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		return tr.drain(ctx) == nil
	}
	if !idle() {
		t.Fatal("a connection with no request counts as busy")
	}
	go func() { _, _ = b.Write([]byte("POST / HTTP/1.1\r\n\r\n")) }()
	buf := make([]byte, 64)
	if _, err := c.Read(buf); err != nil {
		t.Fatal(err)
	}
	if idle() {
		t.Fatal("a request being handled counts as idle")
	}
	go func() { _, _ = io.ReadAll(b) }()
	if _, err := c.Write([]byte("HTTP/1.1 200 OK\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	if idle() {
		t.Fatal("idle before the server read again")
	}
	_ = c.(*trackedConn).Conn.SetReadDeadline(time.Now()) // net/http's next read
	_, _ = c.Read(buf)
	if !idle() {
		t.Fatal("an answered request still counts as busy")
	}
	c.Close()
}

type oneConnListener struct {
	c    net.Conn
	used bool
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if l.used {
		return nil, net.ErrClosed
	}
	l.used = true
	return l.c, nil
}
func (l *oneConnListener) Close() error   { return nil }
func (l *oneConnListener) Addr() net.Addr { return &net.UnixAddr{Name: "pipe", Net: "unix"} }

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
