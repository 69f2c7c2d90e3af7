package e2e

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkPluginLoad10k measures the real binary over its socket with
// 10,000 volumes: Get, Path and List latency, and the plugin's resident
// memory idle, with the volumes, and after the queries.
//
//	go test -run '^$' -bench PluginLoad10k -benchtime 2000x ./test/e2e/
func BenchmarkPluginLoad10k(b *testing.B) {
	p := privatePlugin(b, "1G")
	idle, err := p.RSSKiB()
	if err != nil {
		b.Fatal(err)
	}
	const n = 10000
	start := time.Now()
	for i := 0; i < n; i++ {
		pluginOK(b, p, "VolumeDriver.Create", fmt.Sprintf(`{"Name":"load%05d","Opts":{"size":"1"}}`, i))
	}
	createEach := time.Since(start) / n
	loaded, _ := p.RSSKiB()

	var get, path, list time.Duration
	lists := 0
	for i := 0; b.Loop(); i++ {
		name := fmt.Sprintf("load%05d", i%n)
		t0 := time.Now()
		pluginOK(b, p, "VolumeDriver.Get", `{"Name":"`+name+`"}`)
		get += time.Since(t0)
		t0 = time.Now()
		pluginOK(b, p, "VolumeDriver.Path", `{"Name":"`+name+`"}`)
		path += time.Since(t0)
		if i%100 == 0 {
			t0 = time.Now()
			out := pluginOK(b, p, "VolumeDriver.List", `{}`)
			list += time.Since(t0)
			lists++
			if got := len(out["Volumes"].([]any)); got != n {
				b.Fatalf("List returned %d volumes, want %d", got, n)
			}
		}
	}
	after, _ := p.RSSKiB()
	b.ReportMetric(float64(createEach.Microseconds())/1000, "ms/create")
	b.ReportMetric(float64(get.Microseconds())/float64(b.N), "µs/get")
	b.ReportMetric(float64(path.Microseconds())/float64(b.N), "µs/path")
	b.ReportMetric(float64(list.Microseconds())/1000/float64(lists), "ms/list")
	b.ReportMetric(float64(idle)/1024, "MiB-rss-idle")
	b.ReportMetric(float64(loaded)/1024, "MiB-rss-10k-volumes")
	b.ReportMetric(float64(after)/1024, "MiB-rss-after-queries")
}
