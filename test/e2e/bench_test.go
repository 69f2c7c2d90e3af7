package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// benchPlugin is shared by every run of the benchmark function (the testing
// package calls it several times with growing b.N).
var benchPlugin struct {
	once    sync.Once
	p       *Plugin
	delayed *Plugin // the same with release_delay
	idleRSS int64
	err     error
}

// BenchmarkCreateRun measures what a user waits for with a fresh volume:
// `docker volume create` + `docker run --rm -v vol:/data img true` (create,
// attach, format, mount, unmount, detach). In the same run it measures
// Docker's own local driver mounting an equivalent loop-backed ext4, which
// must be prepared by hand first (sparse file, losetup, mkfs.ext4 with the
// flags blockvol uses), and reports both and their ratios, and the plugin's
// memory idle and after the run. A second plugin with release_delay = "1s"
// runs the same cycle in the same loop (Docker's copy-up Unmount and the
// container's Mount then share one mount).
//
//	go test -run XXX -bench . -benchtime 10x ./test/e2e/
func BenchmarkCreateRun(b *testing.B) {
	requireDocker(b)
	benchPlugin.once.Do(func() {
		benchPlugin.p = startPlugin(b, PluginConfig{DefaultSize: "1G", DefaultFS: "ext4", LogLevel: "info"})
		benchPlugin.delayed = startPlugin(b, PluginConfig{DefaultSize: "1G", DefaultFS: "ext4", LogLevel: "info", ReleaseDelay: "1s"})
		benchPlugin.idleRSS, benchPlugin.err = benchPlugin.p.RSSKiB()
	})
	if benchPlugin.p == nil {
		b.Skip("plugin not available")
	}
	if benchPlugin.err != nil {
		b.Fatal(benchPlugin.err)
	}
	p := benchPlugin.p
	localDir := filepath.Join(env.root, "bench-local")
	if err := os.MkdirAll(localDir, 0o755); err != nil {
		b.Fatal(err)
	}
	nonce := time.Now().UnixNano() % 1_000_000

	blockvolOn := func(p *Plugin, name string) time.Duration {
		start := time.Now()
		mustDocker(b, "volume", "create", "-d", p.Config.Name, "-o", "size=1", "-o", "fstype=ext4", name)
		mustDocker(b, "run", "--rm", "--network", "none", "-v", name+":/data", env.image, "true")
		d := time.Since(start)
		mustDocker(b, "volume", "rm", name)
		return d
	}
	blockvolOnce := func(name string) time.Duration { return blockvolOn(p, name) }
	localOnce := func(name string) (prep, dock time.Duration) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		start := time.Now()
		l, err := newLoopExt4(ctx, localDir, name, gib)
		if err != nil {
			b.Fatal(err)
		}
		prep = time.Since(start)
		start = time.Now()
		mustDocker(b, "volume", "create", "-d", "local", "-o", "type=ext4", "-o", "device="+l.Dev, name)
		mustDocker(b, "run", "--rm", "--network", "none", "-v", name+":/data", env.image, "true")
		dock = time.Since(start)
		mustDocker(b, "volume", "rm", name)
		if err := l.Close(); err != nil {
			b.Fatal(err)
		}
		return prep, dock
	}

	// Warm up every path (first Activate, page cache of the binaries).
	blockvolOnce(fmt.Sprintf("bench-warm-bv-%d", nonce))
	blockvolOn(benchPlugin.delayed, fmt.Sprintf("bench-warm-bvd-%d", nonce))
	localOnce(fmt.Sprintf("bench-warm-local-%d", nonce))

	var bv, bvd, lprep, ldock time.Duration
	// Each iteration's ratios, for the medians: on a busy host one slow
	// iteration moves the means, not the medians.
	var pairRatios, delayedRatios []float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var d, dd, pr, dk time.Duration
		steps := []func(){
			func() { d = blockvolOnce(fmt.Sprintf("bench-bv-%d-%d", nonce, i)) },
			func() { dd = blockvolOn(benchPlugin.delayed, fmt.Sprintf("bench-bvd-%d-%d", nonce, i)) },
			func() { pr, dk = localOnce(fmt.Sprintf("bench-local-%d-%d", nonce, i)) },
		}
		for j := range steps { // rotate the order to spread any drift evenly
			steps[(i+j)%len(steps)]()
		}
		bv, bvd, lprep, ldock = bv+d, bvd+dd, lprep+pr, ldock+dk
		pairRatios = append(pairRatios, float64(d)/float64(pr+dk))
		delayedRatios = append(delayedRatios, float64(dd)/float64(pr+dk))
	}
	b.StopTimer()
	median := func(x []float64) float64 { slices.Sort(x); return x[len(x)/2] }

	n := float64(b.N)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / n }
	afterRSS, err := p.RSSKiB()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(ms(bv), "blockvol-ms/op")
	b.ReportMetric(ms(bvd), "blockvol-release-delay-ms/op")
	b.ReportMetric(ms(ldock), "local-ms/op")
	b.ReportMetric(ms(lprep+ldock), "local+prep-ms/op")
	b.ReportMetric(ms(bv)/ms(lprep+ldock), "ratio-vs-local+prep")
	b.ReportMetric(ms(bv)/ms(ldock), "ratio-vs-local")
	b.ReportMetric(median(pairRatios), "median-ratio-vs-local+prep")
	b.ReportMetric(ms(bvd)/ms(lprep+ldock), "release-delay-ratio-vs-local+prep")
	b.ReportMetric(float64(benchPlugin.idleRSS), "rss-idle-KiB")
	b.ReportMetric(float64(afterRSS), "rss-after-KiB")
	b.Logf("N=%d: blockvol create+run %.1f ms; local driver create+run %.1f ms (+ losetup/mkfs prep %.1f ms = %.1f ms); ratio %.2f vs local+prep (median of the iterations' ratios %.2f), %.2f vs local alone; with release_delay 1s %.1f ms, ratio %.2f vs local+prep (median %.2f); plugin VmRSS idle %d KiB, after %d KiB",
		b.N, ms(bv), ms(ldock), ms(lprep), ms(lprep+ldock), ms(bv)/ms(lprep+ldock), median(pairRatios), ms(bv)/ms(ldock),
		ms(bvd), ms(bvd)/ms(lprep+ldock), median(delayedRatios), benchPlugin.idleRSS, afterRSS)
}
