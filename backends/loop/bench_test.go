package loop

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/blockvol/blockvol/hostexec"
)

// BenchmarkList10000 measures List and Get over a data directory holding
// 10,000 volumes. The files are written directly: Create fsyncs four times
// per volume, which would measure the disk, not the backend.
func BenchmarkList10000(b *testing.B) {
	const n = 10000
	root := b.TempDir()
	data, sys := root+"/data", root+"/sys"
	for i := range 8 {
		if err := os.MkdirAll(fmt.Sprintf("%s/block/loop%d", sys, i), 0o755); err != nil {
			b.Fatal(err)
		}
	}
	if err := os.MkdirAll(data, 0o700); err != nil {
		b.Fatal(err)
	}
	now := time.Now().UTC()
	for i := range n {
		name := fmt.Sprintf("vol-%05d", i)
		rec, err := json.Marshal(record{SizeBytes: 1 << 30, CreatedAt: now, Meta: map[string]string{"fs": "ext4", "mode": "0755"}})
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(data+"/"+name+".json", rec, 0o600); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(data+"/"+name+".img", nil, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	be, err := New(Config{DataDir: data, SysRoot: sys}, hostexec.NewFake(b), nil)
	if err != nil {
		b.Fatal(err)
	}
	// Two of them attached.
	for i, name := range []string{"vol-00042", "vol-09999"} {
		dir := fmt.Sprintf("%s/block/loop%d/loop", sys, i)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(dir+"/backing_file", []byte(be.imgPath(name)+"\n"), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	b.Run("List", func(b *testing.B) {
		for b.Loop() {
			vols, err := be.List(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if len(vols) != n || vols[42].Status["device"] != "/dev/loop0" {
				b.Fatalf("List returned %d volumes", len(vols))
			}
		}
	})
	b.Run("Get", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, err := be.Get(ctx, fmt.Sprintf("vol-%05d", i%n)); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}
