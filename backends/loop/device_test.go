package loop

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// TestRealKernelLoopsParallel: attaches made at once each get a device of
// their own; none fails because another took the free device it was named.
func TestRealKernelLoopsParallel(t *testing.T) {
	b := newRealBackend(t)
	const n = 16
	ctx := context.Background()
	devs := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		img := filepath.Join(b.dir, fmt.Sprintf("p%d.img", i))
		if err := os.WriteFile(img, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(img, mib); err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { devs[i], errs[i] = b.loops.attach(ctx, img, false) })
	}
	wg.Wait()
	seen := map[string]bool{}
	for i := range n {
		if errs[i] != nil {
			t.Errorf("attach %d: %v", i, errs[i])
			continue
		}
		if seen[devs[i]] {
			t.Errorf("%s handed out twice", devs[i])
		}
		seen[devs[i]] = true
		if got, err := b.devicesOf(filepath.Join(b.dir, fmt.Sprintf("p%d.img", i))); err != nil || len(got) != 1 || got[0] != devs[i] {
			t.Errorf("devices of image %d = %v, %v; want [%s]", i, got, err, devs[i])
		}
	}
}
