// Package mounttable is blockvol's one reader of /proc/<pid>/mountinfo,
// through github.com/moby/sys/mountinfo.
package mounttable

import (
	"fmt"
	"os"

	"github.com/moby/sys/mountinfo"
)

// Read reads the mountinfo file at path (unescaped, in the kernel's order).
// A malformed line fails the whole read: a caller deciding whether something
// is in use must not guess from part of the table.
func Read(path string) ([]*mountinfo.Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	defer f.Close()
	out, err := mountinfo.GetMountsFromReader(f, nil)
	if err != nil {
		return nil, fmt.Errorf("read mount table %s: %w", path, err)
	}
	return out, nil
}
