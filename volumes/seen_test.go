package volumes

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
)

// Volumes remembered at once share writes of the set, and none is lost:
// the file read back after they return holds every one of them.
func TestSeenConcurrentRemembersAllSaved(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seen.json")
	log := slog.New(slog.DiscardHandler)
	s := loadSeen(path, log)
	var wg sync.WaitGroup
	for i := range 15 {
		wg.Go(func() { s.remember(fmt.Sprintf("v%d", i), "local") })
	}
	wg.Wait()
	s.remember("v3", "") // a removal is saved too
	back := loadSeen(path, log)
	for i := range 15 {
		want := "local"
		if i == 3 {
			want = ""
		}
		if got := back.backend(fmt.Sprintf("v%d", i)); got != want {
			t.Errorf("v%d read back on %q, want %q", i, got, want)
		}
	}
}
