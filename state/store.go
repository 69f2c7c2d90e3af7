package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrNotFound is returned by Load for a name that has no record.
var ErrNotFound = errors.New("no record")

// Store keeps one JSON record per name in a directory. Names must be safe
// file names (the caller validates them); each record is written
// atomically (a temporary file, fsynced, renamed). A Store does no locking:
// callers serialize writes to one name, and different names never share a
// file.
//
// A record describes this host's use of a volume during this boot (phase,
// users, device), which a power loss ends. So only a new record is made
// durable with a directory fsync; an overwrite or a removal that a power
// loss undoes leaves the record as it was one step earlier, which recovery
// handles like any step interrupted there. This saves a directory fsync on
// every step of a mount and an unmount after the first.
type Store struct {
	dir string
}

const recordExt = ".json"

// OpenStore returns a Store over dir, creating it (0700) if missing and
// removing temporary files left by a crash in the middle of a write.
func OpenStore(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	leftovers, err := filepath.Glob(filepath.Join(dir, ".*.tmp-*"))
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	for _, f := range leftovers {
		if err := os.Remove(f); err != nil {
			return nil, fmt.Errorf("state dir: remove leftover %s: %w", f, err)
		}
	}
	return &Store{dir: dir}, nil
}

func (s *Store) path(name string) string { return filepath.Join(s.dir, name+recordExt) }

// Save writes v as the record of name.
func (s *Store) Save(name string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode record %s: %w", name, err)
	}
	return UpdateFileAtomic(s.path(name), append(data, '\n'), 0o600)
}

// Load reads the record of name into v, or returns ErrNotFound. A symlink
// in the record's place is never followed: it is an error.
func (s *Store) Load(name string, v any) error {
	data, err := readNoFollow(s.path(name))
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("record %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("read record %s: %w", name, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode record %s: %w", s.path(name), err)
	}
	return nil
}

// Quarantine sets the damaged record of name aside (see the package
// function Quarantine) and returns where it went.
func (s *Store) Quarantine(name string) (string, error) { return Quarantine(s.path(name)) }

// Quarantined lists the paths of the records Quarantine set aside.
func (s *Store) Quarantined() ([]string, error) {
	return s.list(func(e os.DirEntry) (string, bool) {
		return filepath.Join(s.dir, e.Name()), IsQuarantined(e.Name()) && !strings.HasPrefix(e.Name(), ".")
	})
}

// list returns, in directory order, what pick makes of each entry of the
// records' directory that pick keeps (its second result).
func (s *Store) list(pick func(e os.DirEntry) (string, bool)) ([]string, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("read state dir: %w", err)
	}
	var out []string
	for _, e := range entries {
		if v, ok := pick(e); ok {
			out = append(out, v)
		}
	}
	return out, nil
}

// Dir returns the directory of the records.
func (s *Store) Dir() string { return s.dir }

// readNoFollow is os.ReadFile that refuses a symlink as the last element.
func readNoFollow(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// Delete removes the record of name; a missing record is not an error.
// The removal is not made durable (see Store).
func (s *Store) Delete(name string) error {
	p := s.path(name)
	if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("remove %s: %w", p, err)
	}
	return nil
}

// Names lists the names that have a record.
func (s *Store) Names() ([]string, error) {
	return s.list(func(e os.DirEntry) (string, bool) {
		n := e.Name()
		return strings.TrimSuffix(n, recordExt), e.Type().IsRegular() && !strings.HasPrefix(n, ".") && strings.HasSuffix(n, recordExt)
	})
}
