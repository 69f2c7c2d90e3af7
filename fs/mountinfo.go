package fs

import (
	"path/filepath"

	"github.com/moby/sys/mountinfo"

	"github.com/blockvol/blockvol/internal/mounttable"
)

// MountedDevice returns the source (the device) of the filesystem mounted
// at target according to the mount table, or "" when nothing is mounted
// there. target is compared after filepath.Clean; symbolic links are not
// resolved. When several mounts are stacked on target the last one listed,
// the one visible, is returned.
func (f *FS) MountedDevice(target string) (string, error) {
	e, err := f.mountAt(target)
	if err != nil || e == nil {
		return "", err
	}
	return e.Source, nil
}

// mountAt returns the visible mount at target, or nil.
func (f *FS) mountAt(target string) (*mountinfo.Info, error) {
	entries, err := mounttable.Read(f.mountInfoPath())
	if err != nil {
		return nil, err
	}
	target = filepath.Clean(target)
	var found *mountinfo.Info
	for _, e := range entries {
		if e.Mountpoint == target {
			found = e
		}
	}
	return found, nil
}
