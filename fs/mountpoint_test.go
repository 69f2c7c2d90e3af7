package fs

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// A symlink at the mount point is never mounted through: it is replaced by
// a directory of its own, and what it pointed to is untouched. A file there
// is refused.
func TestMountNeverFollowsASymlinkAtTheMountPoint(t *testing.T) {
	root := t.TempDir()
	outside := filepath.Join(root, "outside")
	if err := os.Mkdir(outside, 0o700); err != nil {
		t.Fatal(err)
	}
	mountDir := filepath.Join(root, "mnt")
	if err := os.Mkdir(mountDir, 0o700); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(mountDir, "vol")
	if err := os.Symlink(outside, target); err != nil {
		t.Fatal(err)
	}
	m := &fakeMounter{t: t}
	f := &FS{Mounter: m, Log: quietLog(), MountInfoPath: emptyMountInfo(t)}
	if err := f.Mount(context.Background(), dev, target, "ext4", nil); err != nil {
		t.Fatalf("Mount: %v", err)
	}
	if fi, err := os.Lstat(target); err != nil || !fi.IsDir() {
		t.Fatalf("mount point is %v (%v); want a directory of its own", fi.Mode(), err)
	}
	if fi, err := os.Stat(outside); err != nil || !fi.IsDir() {
		t.Fatalf("the symlink's target was changed: %v", err)
	}
	if len(m.mounts) != 1 || m.mounts[0].Target != target {
		t.Fatalf("mount calls %+v", m.mounts)
	}

	file := filepath.Join(mountDir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.Mount(context.Background(), dev, file, "ext4", nil); err == nil {
		t.Fatal("Mount on a regular file succeeded")
	}
	if len(m.mounts) != 1 {
		t.Fatalf("mount calls %+v", m.mounts)
	}
}
