package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// benchPlugin is shared by every run of the benchmark function (the testing
// package calls it several times with growing b.N).
var benchPlugin struct {
	once    sync.Once
	p       *Plugin
	idleRSS int64
	err     error
}

// BenchmarkCreateRun measures what a user waits for with a fresh volume:
// `docker volume create` + `docker run --rm -v vol:/data img true` (create,
// attach, format, mount, unmount, detach). In the same run it measures
// Docker's own local driver mounting an equivalent loop-backed ext4, which
// must be prepared by hand first (sparse file, losetup, mkfs.ext4 with the
// flags blockvol uses), and reports both and their ratios, and the plugin's
// memory idle and after the run.
//
//	go test -run XXX -bench . -benchtime 10x ./test/e2e/
func BenchmarkCreateRun(b *testing.B) {
	requireDocker(b)
	benchPlugin.once.Do(func() {
		benchPlugin.p = startPlugin(b, PluginConfig{DefaultSize: "1G", DefaultFS: "ext4", LogLevel: "info"})
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

	blockvolOnce := func(name string) time.Duration {
		start := time.Now()
		mustDocker(b, "volume", "create", "-d", p.Config.Name, "-o", "size=1", "-o", "fstype=ext4", name)
		mustDocker(b, "run", "--rm", "--network", "none", "-v", name+":/data", env.image, "true")
		d := time.Since(start)
		mustDocker(b, "volume", "rm", name)
		return d
	}
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

	// Warm up both paths (first Activate, page cache of the binaries).
	blockvolOnce(fmt.Sprintf("bench-warm-bv-%d", nonce))
	localOnce(fmt.Sprintf("bench-warm-local-%d", nonce))

	var bv, lprep, ldock time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		bvName := fmt.Sprintf("bench-bv-%d-%d", nonce, i)
		lName := fmt.Sprintf("bench-local-%d-%d", nonce, i)
		if i%2 == 0 { // alternate the order to spread any drift evenly
			bv += blockvolOnce(bvName)
			pr, dk := localOnce(lName)
			lprep, ldock = lprep+pr, ldock+dk
		} else {
			pr, dk := localOnce(lName)
			lprep, ldock = lprep+pr, ldock+dk
			bv += blockvolOnce(bvName)
		}
	}
	b.StopTimer()

	n := float64(b.N)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / n }
	afterRSS, err := p.RSSKiB()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(ms(bv), "blockvol-ms/op")
	b.ReportMetric(ms(ldock), "local-ms/op")
	b.ReportMetric(ms(lprep+ldock), "local+prep-ms/op")
	b.ReportMetric(ms(bv)/ms(lprep+ldock), "ratio-vs-local+prep")
	b.ReportMetric(ms(bv)/ms(ldock), "ratio-vs-local")
	b.ReportMetric(float64(benchPlugin.idleRSS), "rss-idle-KiB")
	b.ReportMetric(float64(afterRSS), "rss-after-KiB")
	b.Logf("N=%d: blockvol create+run %.1f ms; local driver create+run %.1f ms (+ losetup/mkfs prep %.1f ms = %.1f ms); ratio %.2f vs local+prep, %.2f vs local alone; plugin VmRSS idle %d KiB, after %d KiB",
		b.N, ms(bv), ms(ldock), ms(lprep), ms(lprep+ldock), ms(bv)/ms(lprep+ldock), ms(bv)/ms(ldock), benchPlugin.idleRSS, afterRSS)
}
