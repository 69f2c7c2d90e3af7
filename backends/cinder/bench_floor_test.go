package cinder

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	cv "github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumes"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/fs"
	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/volumes"
)

// BenchmarkCloudCreateRemoveFloor compares what `docker volume create` and
// `docker volume rm` cost through the volumes core (Docker's Get, then
// Create or Remove) with the minimal correct sequence on the same client,
// measured in the same run: POST then GET until available, and DELETE then
// GET until gone (polled every 10 ms). It reports both means and the
// ratio, and the ratios against the same sequences with one name lookup
// added, which Docker's protocol needs (see lookup).
//
//	flock /tmp/bv-cinder.lock go test -run '^$' -bench CloudCreateRemoveFloor -benchtime 10x ./backends/cinder/
func BenchmarkCloudCreateRemoveFloor(b *testing.B) {
	requireCloud(b)
	be := newCloudBackend(b, adminConfig("host-a", AttachAttachments), &fakeInitiator{name: "iqn.2024-01.test:host-a"})
	be.log = discardLogger()
	if os.Getenv("BV_BENCH_LOG") != "" {
		be.log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	core, err := volumes.New(volumes.Config{
		Backends:       map[string]backends.Backend{"cinder": be},
		ParseMountOpts: fs.ParseMountOptions,
		StateDir:       b.TempDir(),
		MountDir:       b.TempDir(),
		Defaults:       volumes.OptionDefaults{Backend: "cinder", Size: "1G", FSType: "ext4"},
		CreateTimeout:  5 * time.Minute,
		MountTimeout:   5 * time.Minute,
		OtherTimeout:   5 * time.Minute,
		Log:            discardLogger(),
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	c, err := be.client(ctx)
	if err != nil {
		b.Fatal(err)
	}
	var create, remove, refCreate, refRemove, lookups time.Duration
	// lookup is the one name lookup that Docker's protocol adds to either
	// sequence: Docker names volumes, Cinder addresses them by ID, and
	// Docker asks Get before Create and before Remove.
	lookup := func(name string) {
		t0 := time.Now()
		pages, err := cv.List(c.base(), cv.ListOpts{Name: name}).AllPages(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := cv.ExtractVolumes(pages); err != nil {
			b.Fatal(err)
		}
		lookups += time.Since(t0)
	}
	ref := func() {
		// The same request body as blockvol's: its tag and the options.
		meta, err := encodeMeta(map[string]string{"size": "1G", "fstype": "ext4", "backend": "cinder"})
		if err != nil {
			b.Fatal(err)
		}
		meta[tagKey] = tagValue
		t0 := time.Now()
		v, err := cv.Create(ctx, c.base(), cv.CreateOpts{Name: volName(b), Size: 1, Description: "blockvol volume", Metadata: meta}, nil).Extract()
		if err != nil {
			b.Fatal(err)
		}
		pollUntil(ctx, b, c, v.ID, func(v *cv.Volume) bool { return v != nil && v.Status == "available" })
		refCreate += time.Since(t0)
		t0 = time.Now()
		if err := cv.Delete(ctx, c.base(), v.ID, cv.DeleteOpts{}).ExtractErr(); err != nil {
			b.Fatal(err)
		}
		pollUntil(ctx, b, c, v.ID, func(v *cv.Volume) bool { return v == nil })
		refRemove += time.Since(t0)
		lookup(v.Name)
	}
	ours := func() {
		name := volName(b)
		t0 := time.Now()
		if _, err := core.Get(ctx, name); !errors.Is(err, sentinel.ErrNotFound) {
			b.Fatalf("Get of a new name = %v, want not found", err)
		}
		if err := core.Create(ctx, name, map[string]string{"size": "1"}); err != nil {
			b.Fatal(err)
		}
		create += time.Since(t0)
		t0 = time.Now()
		if _, err := core.Get(ctx, name); err != nil {
			b.Fatal(err)
		}
		if err := core.Remove(ctx, name); err != nil {
			b.Fatal(err)
		}
		remove += time.Since(t0)
	}
	for i := 0; b.Loop(); i++ {
		// Alternate which goes first: each may leave Cinder busy behind it.
		if i%2 == 0 {
			ref()
			ours()
		} else {
			ours()
			ref()
		}
	}
	n := float64(b.N)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / n }
	b.ReportMetric(ms(create), "ms/create")
	b.ReportMetric(ms(refCreate), "ms/ref-POST+poll")
	b.ReportMetric(float64(create)/float64(refCreate), "ratio-create")
	b.ReportMetric(ms(remove), "ms/remove")
	b.ReportMetric(ms(refRemove), "ms/ref-DELETE+poll")
	b.ReportMetric(float64(remove)/float64(refRemove), "ratio-remove")
	// Against the minimal sequence of a name-addressed API: the same, and
	// one lookup of the name (timed apart, so that it leaves the two
	// references above as they were).
	b.ReportMetric(ms(lookups), "ms/ref-lookup")
	b.ReportMetric(float64(create)/float64(refCreate+lookups), "ratio-create-by-name")
	b.ReportMetric(float64(remove)/float64(refRemove+lookups), "ratio-remove-by-name")
}

// pollUntil GETs volume id every 10 ms until done says so (v is nil once
// the volume is gone).
func pollUntil(ctx context.Context, b *testing.B, c *conn, id string, done func(*cv.Volume) bool) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		v, err := cv.Get(ctx, c.base(), id).Extract()
		switch {
		case gophercloud.ResponseCodeIs(err, 404):
			v = nil
		case err != nil:
			b.Fatal(err)
		case v.Status == "error":
			b.Fatalf("volume %s went to error", id)
		}
		if done(v) {
			return
		}
		select {
		case <-ctx.Done():
			b.Fatal(ctx.Err())
		case <-tick.C:
		}
	}
}
