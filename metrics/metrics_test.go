package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type stats struct{ attached, mounted int }

func (s stats) Stats() (int, int) { return s.attached, s.mounted }

// scrape GETs /metrics over a unix socket.
func scrape(t *testing.T, sock string) string {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Get("http://metrics/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s %v", resp.Status, err)
	}
	return string(b)
}

func TestMetricsOverUnixSocket(t *testing.T) {
	m := New()
	sock := filepath.Join(t.TempDir(), "run", "metrics.sock")
	l, err := Listen("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- m.Serve(ctx, l) }()

	before := scrape(t, sock)
	if strings.Contains(before, "blockvol_volumes_attached") {
		t.Error("volume gauges exported before SetStats")
	}
	m.Observe("create", "local", 30*time.Millisecond, nil)
	m.Observe("create", "local", 2*time.Second, errors.New("boom"))
	m.Observe("mount", "local", 3*time.Second, nil)
	m.Observe("list", "", time.Millisecond, nil)
	m.SetStats(stats{attached: 3, mounted: 2})

	text := scrape(t, sock)
	for _, want := range []string{
		`blockvol_operations_total{backend="local",op="create"} 2`,
		`blockvol_operations_total{backend="local",op="mount"} 1`,
		`blockvol_operations_total{backend="",op="list"} 1`,
		`blockvol_operation_errors_total{backend="local",op="create"} 1`,
		`blockvol_operation_duration_seconds_bucket{backend="local",op="create",le="0.05"} 1`,
		`blockvol_operation_duration_seconds_bucket{backend="local",op="create",le="2.5"} 2`,
		`blockvol_operation_duration_seconds_count{backend="local",op="mount"} 1`,
		"blockvol_volumes_attached 3",
		"blockvol_volumes_mounted 2",
		"process_resident_memory_bytes",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	if strings.Contains(text, `blockvol_operation_errors_total{backend="local",op="mount"}`) {
		t.Error("an error counted for a call that succeeded")
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("metrics socket left after shutdown (%v)", err)
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "metrics.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	l2, err := Listen("unix:" + sock)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	defer l2.Close()
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode %v (%v); want 0660", fi.Mode(), err)
	}
	if _, err := Listen("unix:" + sock); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("a live socket was taken over: %v", err)
	}
}

func TestListenLoopbackTCP(t *testing.T) {
	l, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
}
