package cinder

import (
	"context"
	"testing"
	"time"

	"github.com/blockvol/blockvol/backends"
)

// BenchmarkCloudCycle times Create+Attach+Detach+Remove of a 1 GiB volume
// against the real Keystone and Cinder (the fake initiator's login costs
// nothing), with each attach API. Per-phase means are reported as
// create-ms, attach-ms, detach-ms and remove-ms.
//
//	go test -run '^$' -bench CloudCycle -benchtime 5x ./backends/cinder/
func BenchmarkCloudCycle(b *testing.B) {
	requireCloud(b)
	for _, api := range attachAPIs {
		b.Run(api, func(b *testing.B) {
			be := newCloudBackend(b, adminConfig("host-a", api), &fakeInitiator{name: "iqn.2024-01.test:host-a"})
			be.log = discardLogger()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			var phases [4]time.Duration
			b.ResetTimer()
			for b.Loop() {
				name := volName(b)
				steps := []func() error{
					func() error {
						_, err := be.Create(ctx, backends.CreateRequest{Name: name, SizeBytes: 1 << 30})
						return err
					},
					func() error { _, err := be.Attach(ctx, name, backends.AttachOptions{}); return err },
					func() error { return be.Detach(ctx, name) },
					func() error { return be.Remove(ctx, name) },
				}
				for i, step := range steps {
					t0 := time.Now()
					if err := step(); err != nil {
						b.Fatal(err)
					}
					phases[i] += time.Since(t0)
				}
			}
			n := float64(b.N)
			for i, unit := range []string{"create-ms", "attach-ms", "detach-ms", "remove-ms"} {
				b.ReportMetric(float64(phases[i].Milliseconds())/n, unit)
			}
		})
	}
}
