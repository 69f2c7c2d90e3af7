package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/volume"
)

// TestServeMetrics: `blockvol serve` with [metrics] listen on a unix socket;
// after a few operations a scrape shows their counts, errors and latency,
// and (as root, with a real loop mount) the mounted-volume gauge.
func TestServeMetrics(t *testing.T) {
	dir := t.TempDir()
	msock := filepath.Join(dir, "run", "metrics.sock")
	cfgPath, sock := testConfig(t, dir, "[metrics]\nlisten = \"unix:"+msock+"\"\n")
	// Without root the plugin cannot chown its own socket: hand it one as
	// systemd would.
	var files []*os.File
	if os.Geteuid() != 0 {
		l, err := net.Listen("unix", sock)
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
	c := startBlockvol(t, filepath.Join(dir, "blockvol.log"), files, nil, "serve", "--config", cfgPath)
	waitAnswer(t, sock, c)

	cl := newPluginClient(sock)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	must := func(endpoint string, req, resp any) {
		t.Helper()
		if err := cl.call(ctx, endpoint, req, resp); err != nil {
			t.Fatalf("%s: %v", endpoint, err)
		}
	}
	must("VolumeDriver.Create", volume.CreateRequest{Name: "m1", Options: map[string]string{"size": "64M"}}, nil)
	must("VolumeDriver.Create", volume.CreateRequest{Name: "m2", Options: map[string]string{"size": "64M"}}, nil)
	must("VolumeDriver.List", struct{}{}, &volume.ListResponse{})
	must("VolumeDriver.Get", volume.GetRequest{Name: "m1"}, &volume.GetResponse{})
	if err := cl.call(ctx, "VolumeDriver.Get", volume.GetRequest{Name: "missing"}, &volume.GetResponse{}); err == nil {
		t.Fatal("Get of a missing volume succeeded")
	}
	mounted := os.Geteuid() == 0 && haveTools("losetup", "mkfs.ext4", "blkid")
	if mounted {
		must("VolumeDriver.Mount", volume.MountRequest{Name: "m1"}, &volume.MountResponse{})
	}

	text := scrapeUnix(t, msock)
	want := []string{
		`blockvol_operations_total{backend="local",op="create"} 2`,
		`blockvol_operations_total{backend="",op="list"} 1`,
		`blockvol_operations_total{backend="local",op="get"} 1`,
		`blockvol_operation_errors_total{backend="",op="get"} 1`,
		`blockvol_operation_duration_seconds_count{backend="local",op="create"} 2`,
		"blockvol_volumes_attached 0",
		"blockvol_volumes_mounted 0",
	}
	if mounted {
		want = append(want[:len(want)-2], `blockvol_operations_total{backend="local",op="mount"} 1`,
			"blockvol_volumes_attached 1", "blockvol_volumes_mounted 1")
	}
	for _, w := range want {
		if !strings.Contains(text, w) {
			t.Errorf("scrape lacks %q", w)
		}
	}
	if t.Failed() {
		t.Logf("scrape:\n%s", grepLines(text, "blockvol_"))
	}
	if mounted {
		must("VolumeDriver.Unmount", volume.UnmountRequest{Name: "m1"}, nil)
		if text := scrapeUnix(t, msock); !strings.Contains(text, "blockvol_volumes_mounted 0") {
			t.Errorf("after unmount:\n%s", grepLines(text, "blockvol_volumes"))
		}
	}
	must("VolumeDriver.Remove", volume.RemoveRequest{Name: "m1"}, nil)
	must("VolumeDriver.Remove", volume.RemoveRequest{Name: "m2"}, nil)
	if err := c.stop(t); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	if _, err := os.Lstat(msock); err == nil {
		t.Error("metrics socket left behind")
	}
}

func haveTools(names ...string) bool {
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			return false
		}
	}
	return true
}

func scrapeUnix(t *testing.T, sock string) string {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Get("http://metrics/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func grepLines(text, prefix string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) && !strings.Contains(l, "_bucket") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
