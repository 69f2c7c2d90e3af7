// Package state keeps blockvol's records on disk so that they survive a
// crash of the plugin or of the host: every write goes to a temporary file
// in the same directory, is fsynced, renamed over the old file, and the
// directory is fsynced, so a reader sees either the old or the new record,
// never a torn one.
package state

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// WriteFileAtomic replaces path with data, crash-safely.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	return writeFileAtomic(path, data, perm, true)
}

// UpdateFileAtomic is WriteFileAtomic for a file whose previous version is
// an acceptable state after a power loss: when path exists already the
// rename is not made durable (saving a directory fsync); a new file is.
func UpdateFileAtomic(path string, data []byte, perm os.FileMode) error {
	_, err := os.Lstat(path)
	return writeFileAtomic(path, data, perm, err != nil)
}

// writeFileAtomic is WriteFileAtomic; without syncDir the rename is not
// made durable (after a power loss path may hold its previous contents,
// never a torn or empty file: the data is fsynced before the rename).
func writeFileAtomic(path string, data []byte, perm os.FileMode, syncDir bool) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err = tmp.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err = tmp.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: fsync: %w", path, err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if !syncDir {
		return nil
	}
	return SyncDir(dir)
}

// RemoveFile deletes path (a missing file is not an error) and fsyncs its
// directory so that the removal survives a crash.
func RemoveFile(path string) error {
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return SyncDir(filepath.Dir(path))
}

// SyncDir fsyncs a directory, making renames and removals in it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// damagedMark is inserted in the name of a file set aside by Quarantine.
const damagedMark = ".damaged-"

// Quarantine sets a damaged file aside, keeping it for inspection: path is
// renamed to path + ".damaged-<UTC time>", durably. It returns the new
// path.
func Quarantine(path string) (string, error) {
	to := QuarantineName(path, time.Now())
	if err := os.Rename(path, to); err != nil {
		return "", fmt.Errorf("set aside %s: %w", path, err)
	}
	return to, SyncDir(filepath.Dir(path))
}

// QuarantineName is the name Quarantine gives path at time at (for files
// set aside by other means: on another host, by a helper program).
func QuarantineName(path string, at time.Time) string {
	return path + damagedMark + at.UTC().Format("20060102T150405.000000000Z")
}

// IsQuarantined reports whether a file name is one Quarantine made.
func IsQuarantined(name string) bool { return strings.Contains(name, damagedMark) }
