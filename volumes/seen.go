package volumes

import (
	"encoding/json"
	"errors"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"sync"

	"github.com/blockvol/blockvol/state"
	"golang.org/x/sys/unix"
)

// seen is the set of volumes seen on each backend, name → backend, kept
// in one file of the state directory: after a restart during a backend
// outage, Get still answers for every volume seen before (Docker forgets
// the volumes whose Get fails). A damaged file is set aside and the set
// starts afresh; a failed write is logged: the set is a hint, never a
// reason to fail a call.
type seen struct {
	path string
	log  *slog.Logger

	mu  sync.RWMutex
	m   map[string]string
	gen uint64 // counts changes of m

	saveMu sync.Mutex // orders writes: the last write holds the latest set
	saved  uint64     // the gen of m that the last write held
}

func loadSeen(path string, log *slog.Logger) *seen {
	s := &seen{path: path, log: log, m: map[string]string{}}
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return s
	}
	if err == nil {
		err = json.NewDecoder(f).Decode(&s.m)
		f.Close()
	}
	if err != nil {
		s.m = map[string]string{}
		to, qerr := state.Quarantine(path)
		log.Error("the set of volumes seen on the backends is damaged; set aside, starting afresh", "file", path, "moved_to", to, "err", errors.Join(err, qerr))
	}
	return s
}

// backend returns the backend name was last seen on, or "".
func (s *seen) backend(name string) string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.m[name]
}

// set records name on backend ("" forgets it) and returns the generation
// of the set holding the change, or 0 when nothing changed.
func (s *seen) set(name, backend string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m[name] == backend {
		return 0
	}
	if backend == "" {
		delete(s.m, name)
	} else {
		s.m[name] = backend
	}
	s.gen++
	return s.gen
}

// remember is set, persisted when it changed something.
func (s *seen) remember(name, backend string) {
	if gen := s.set(name, backend); gen != 0 {
		s.save(gen)
	}
}

// save writes the set, unless a write since generation gen was made
// already: concurrent changes (15 volumes created at once) share writes.
func (s *seen) save(gen uint64) {
	s.saveMu.Lock()
	defer s.saveMu.Unlock()
	if s.saved >= gen {
		return
	}
	s.mu.RLock()
	data, err := json.Marshal(maps.Clone(s.m))
	now := s.gen
	s.mu.RUnlock()
	if err == nil {
		// A hint: after a power loss the previous set will do.
		err = state.UpdateFileAtomic(s.path, append(data, '\n'), 0o600)
	}
	if err != nil {
		s.log.Warn("the set of volumes seen on the backends was not saved", "file", s.path, "err", err)
		return
	}
	s.saved = now
}
