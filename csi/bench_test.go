package csi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/docker/go-plugins-helpers/volume"
)

// dockerSocket serves the host's Docker door on a unix socket, as dockerd
// would reach it, and returns a function that POSTs one call.
func (h *host) dockerSocket(b *testing.B) func(endpoint string, req any) {
	sock := filepath.Join(h.root, "plugin.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	go volume.NewHandler(h.docker).Serve(l)
	b.Cleanup(func() { l.Close() })
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	return func(endpoint string, req any) {
		body, _ := json.Marshal(req)
		resp, err := hc.Post("http://plugin/"+endpoint, "application/vnd.docker.plugins.v1.2+json", bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		defer resp.Body.Close()
		var out struct{ Err string }
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Err != "" {
			b.Fatalf("%s: %v %s", endpoint, err, out.Err)
		}
	}
}

// BenchmarkCSIvsDocker: CreateVolume+NodeStageVolume+NodePublishVolume
// over the CSI socket against Docker's Create+Mount over the plugin socket,
// for a fresh 256 MiB ext4 volume on the same loop backend in the same
// process (attach, mkfs, mount each time), with the ratio. Teardown is not
// timed.
func BenchmarkCSIvsDocker(b *testing.B) {
	h := newHost(b)
	docker := h.dockerSocket(b)
	c := h.client()
	ctx := context.Background()
	var csiT, dockerT time.Duration
	for i := 0; b.Loop(); i++ {
		name := fmt.Sprintf("bvcsi-bench-c%d", i)
		staging := filepath.Join(h.root, "bvcsi-st-"+name)
		target := filepath.Join(h.root, "bvcsi-pods", name)
		if err := os.Mkdir(staging, 0o750); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if _, err := c.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csipb.VolumeCapability{mountCap}, CapacityRange: &csipb.CapacityRange{RequiredBytes: 256 << 20}}); err != nil {
			b.Fatal(err)
		}
		if _, err := c.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: name, StagingTargetPath: staging, VolumeCapability: mountCap}); err != nil {
			b.Fatal(err)
		}
		if _, err := c.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: name, StagingTargetPath: staging, TargetPath: target, VolumeCapability: mountCap}); err != nil {
			b.Fatal(err)
		}
		csiT += time.Since(start)

		dname := fmt.Sprintf("bvcsi-bench-d%d", i)
		start = time.Now()
		docker("VolumeDriver.Create", volume.CreateRequest{Name: dname, Options: map[string]string{"size": "256M"}})
		docker("VolumeDriver.Mount", volume.MountRequest{Name: dname, ID: "bvcsi-bench"})
		dockerT += time.Since(start)

		b.StopTimer()
		if _, err := c.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: name, TargetPath: target}); err != nil {
			b.Fatal(err)
		}
		if _, err := c.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: name, StagingTargetPath: staging}); err != nil {
			b.Fatal(err)
		}
		if _, err := c.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: name}); err != nil {
			b.Fatal(err)
		}
		docker("VolumeDriver.Unmount", volume.UnmountRequest{Name: dname, ID: "bvcsi-bench"})
		docker("VolumeDriver.Remove", volume.RemoveRequest{Name: dname})
		b.StartTimer()
	}
	n := float64(b.N)
	b.ReportMetric(float64(csiT.Microseconds())/1000/n, "ms/csi-create+stage+publish")
	b.ReportMetric(float64(dockerT.Microseconds())/1000/n, "ms/docker-create+mount")
	b.ReportMetric(float64(csiT)/float64(dockerT), "ratio-csi/docker")
}
