package plugin_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blockvol/blockvol/plugin"
	"github.com/docker/go-plugins-helpers/volume"
)

func must(b *testing.B, err error) {
	b.Helper()
	if err != nil {
		b.Fatal(err)
	}
}

// cycle creates, mounts, unmounts and removes one fresh volume.
func cycle(b *testing.B, d *plugin.Driver, name string) (createMount time.Duration) {
	start := time.Now()
	must(b, d.Create(&volume.CreateRequest{Name: name, Options: map[string]string{"size": "1"}}))
	_, err := d.Mount(&volume.MountRequest{Name: name, ID: "bench"})
	must(b, err)
	createMount = time.Since(start)
	must(b, d.Unmount(&volume.UnmountRequest{Name: name, ID: "bench"}))
	must(b, d.Remove(&volume.RemoveRequest{Name: name}))
	return createMount
}

// BenchmarkCreateMount: Create+Mount latency of a fresh 1 GiB ext4 volume
// on the loop backend (attach, mkfs, mount), in-process.
func BenchmarkCreateMount(b *testing.B) {
	h := newRealHost(b)
	var total time.Duration
	for i := 0; b.Loop(); i++ {
		total += cycle(b, h.d, fmt.Sprintf("cm%d", i))
	}
	b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/create+mount")
}

// BenchmarkParallelMount16 mounts 16 fresh volumes at once and compares the
// wall time with mounting one: with per-volume locks the ratio stays far
// below 16.
func BenchmarkParallelMount16(b *testing.B) {
	h := newRealHost(b)
	const n = 16
	var one, sixteen time.Duration
	for i := 0; b.Loop(); i++ {
		var names []string
		for j := 0; j < n; j++ {
			name := fmt.Sprintf("p%d-%d", i, j)
			must(b, h.d.Create(&volume.CreateRequest{Name: name}))
			names = append(names, name)
		}
		start := time.Now()
		_, err := h.d.Mount(&volume.MountRequest{Name: names[0], ID: "x"})
		must(b, err)
		one += time.Since(start)
		start = time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for _, name := range names[1:] {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := h.d.Mount(&volume.MountRequest{Name: name, ID: "x"})
				errs <- err
			}()
		}
		wg.Wait()
		sixteen += time.Since(start)
		close(errs)
		for err := range errs {
			must(b, err)
		}
		for _, name := range names {
			must(b, h.d.Unmount(&volume.UnmountRequest{Name: name, ID: "x"}))
			must(b, h.d.Remove(&volume.RemoveRequest{Name: name}))
		}
	}
	b.ReportMetric(float64(one.Microseconds())/1000/float64(b.N), "ms/1-mount")
	b.ReportMetric(float64(sixteen.Microseconds())/1000/float64(b.N), "ms/15-parallel-mounts")
	b.ReportMetric(float64(sixteen)/float64(one), "ratio-15-parallel/1")
}

// BenchmarkQueries10k measures Get, Path and List with 10,000 volumes, and
// the process's resident memory before and after creating them.
func BenchmarkQueries10k(b *testing.B) {
	h := newRealHost(b)
	rssIdle := vmRSSKiB()
	const n = 10000
	for i := 0; i < n; i++ {
		must(b, h.d.Create(&volume.CreateRequest{Name: fmt.Sprintf("q%05d", i), Options: map[string]string{"size": "1"}}))
	}
	var get, path, list time.Duration
	for i := 0; b.Loop(); i++ {
		name := fmt.Sprintf("q%05d", i%n)
		start := time.Now()
		_, err := h.d.Get(&volume.GetRequest{Name: name})
		must(b, err)
		get += time.Since(start)
		start = time.Now()
		_, err = h.d.Path(&volume.PathRequest{Name: name})
		must(b, err)
		path += time.Since(start)
		if i%100 == 0 {
			start = time.Now()
			res, err := h.d.List()
			must(b, err)
			if len(res.Volumes) != n {
				b.Fatalf("List returned %d volumes, want %d", len(res.Volumes), n)
			}
			list += time.Since(start)
		}
	}
	lists := (b.N + 99) / 100
	b.ReportMetric(float64(get.Microseconds())/float64(b.N), "µs/get")
	b.ReportMetric(float64(path.Microseconds())/float64(b.N), "µs/path")
	b.ReportMetric(float64(list.Microseconds())/1000/float64(lists), "ms/list")
	b.ReportMetric(float64(rssIdle)/1024, "MiB-rss-idle")
	b.ReportMetric(float64(vmRSSKiB())/1024, "MiB-rss-10k-volumes")
}

func vmRSSKiB() int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return -1
}

// BenchmarkParallelCreateMount15 creates and mounts 15 fresh 1 GiB ext4
// volumes at once through the plugin, and in the same run times the
// kernel's own commands doing the same work one volume after another
// (truncate, losetup, mkfs.ext4 with blockvol's flags, mount): the floor on
// this host. It reports both wall times and their ratio.
//
//	go test -run '^$' -bench ParallelCreateMount15 -benchtime 5x ./plugin/
func BenchmarkParallelCreateMount15(b *testing.B) {
	h := newRealHost(b)
	const n = 15
	refDir := b.TempDir()
	var par, ref time.Duration
	for i := 0; b.Loop(); i++ {
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for j := range n {
			name := fmt.Sprintf("pc%d-%d", i, j)
			wg.Go(func() {
				if err := h.d.Create(&volume.CreateRequest{Name: name, Options: map[string]string{"size": "1"}}); err != nil {
					errs <- err
					return
				}
				_, err := h.d.Mount(&volume.MountRequest{Name: name, ID: "x"})
				errs <- err
			})
		}
		wg.Wait()
		par += time.Since(start)
		close(errs)
		for err := range errs {
			must(b, err)
		}
		ref += kernelCreateMount(b, refDir, n)
		for j := range n {
			name := fmt.Sprintf("pc%d-%d", i, j)
			must(b, h.d.Unmount(&volume.UnmountRequest{Name: name, ID: "x"}))
			must(b, h.d.Remove(&volume.RemoveRequest{Name: name}))
		}
	}
	b.ReportMetric(float64(par.Microseconds())/1000/float64(b.N), "ms/15-parallel-create+mount")
	b.ReportMetric(float64(ref.Microseconds())/1000/float64(b.N), "ms/ref-kernel-15-in-sequence")
	b.ReportMetric(float64(par)/float64(ref), "ratio")
}

// kernelCreateMount makes, attaches, formats and mounts n 1 GiB images in
// dir one after another with the host's commands, returns the time taken,
// and undoes it all.
func kernelCreateMount(b *testing.B, dir string, n int) time.Duration {
	b.Helper()
	run := func(argv ...string) string {
		out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
		if err != nil {
			b.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	var devs, mnts []string
	start := time.Now()
	for j := range n {
		img := filepath.Join(dir, fmt.Sprintf("ref%d.img", j))
		mnt := filepath.Join(dir, fmt.Sprintf("ref%d", j))
		run("truncate", "-s", "1G", img)
		dev := run("losetup", "--find", "--show", "--nooverlap", img)
		devs = append(devs, dev)
		run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", dev)
		run("mkdir", "-p", mnt)
		run("mount", "-t", "ext4", "-o", "nosuid,nodev", dev, mnt)
		mnts = append(mnts, mnt)
	}
	d := time.Since(start)
	for j := range mnts {
		run("umount", mnts[j])
		run("losetup", "--detach", devs[j])
		must(b, os.Remove(filepath.Join(dir, fmt.Sprintf("ref%d.img", j))))
	}
	return d
}
