package fs

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestCleanReadsTheSuperblock: Clean passes exactly the filesystems e2fsck
// -p would pass as clean (ext4), or whose magic is there (xfs), made by
// the real mkfs; every flag that makes e2fsck check makes Clean say false.
func TestCleanReadsTheSuperblock(t *testing.T) {
	requireTools(t, "mkfs.ext4", "mkfs.xfs")
	dir := t.TempDir()
	mkfs := func(fstype string, size int64) string {
		img := filepath.Join(dir, fstype+".img")
		if err := os.WriteFile(img, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(img, size); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("mkfs."+fstype, "-q", img).CombinedOutput(); err != nil {
			t.Fatalf("mkfs.%s: %v: %s", fstype, err, out)
		}
		return img
	}
	ext4 := mkfs("ext4", 64*MiB)
	xfs := mkfs("xfs", 320*MiB)
	zeros := filepath.Join(dir, "zeros.img")
	if err := os.WriteFile(zeros, make([]byte, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	f := &FS{}
	for _, tc := range []struct {
		dev, fstype string
		want        bool
	}{
		{ext4, "ext4", true},
		{xfs, "xfs", true},
		{ext4, "xfs", false},
		{xfs, "ext4", false},
		{zeros, "ext4", false},
		{zeros, "xfs", false},
		{ext4, "btrfs", false},
	} {
		got, err := f.Clean(tc.dev, tc.fstype)
		if err != nil || got != tc.want {
			t.Errorf("Clean(%s, %s) = %v, %v; want %v", filepath.Base(tc.dev), tc.fstype, got, err, tc.want)
		}
	}
	if _, err := f.Clean(filepath.Join(dir, "missing"), "ext4"); err == nil {
		t.Error("Clean of a missing device gave no error")
	}

	sb, err := os.ReadFile(ext4)
	if err != nil {
		t.Fatal(err)
	}
	super := sb[ext4SuperOffset : ext4SuperOffset+ext4SuperSize]
	if !ext4Clean(super) {
		t.Fatal("the fresh ext4's superblock is not clean")
	}
	le := binary.LittleEndian
	for _, tc := range []struct {
		why    string
		change func(s []byte)
	}{
		{"not cleanly unmounted", func(s []byte) { le.PutUint16(s[ext4State:], le.Uint16(s[ext4State:])&^ext4StateValid) }},
		{"errors recorded", func(s []byte) { le.PutUint16(s[ext4State:], le.Uint16(s[ext4State:])|ext4StateError) }},
		{"journal to replay", func(s []byte) {
			le.PutUint32(s[ext4FeatureIncompat:], le.Uint32(s[ext4FeatureIncompat:])|ext4IncompatRecover)
		}},
		{"orphan file in use", func(s []byte) {
			le.PutUint32(s[ext4FeatureROCompat:], le.Uint32(s[ext4FeatureROCompat:])|ext4ROOrphanPresent)
		}},
		{"orphan inodes", func(s []byte) { le.PutUint32(s[ext4LastOrphan:], 12) }},
		{"mount count reached", func(s []byte) { le.PutUint16(s[ext4MaxMntCount:], 3); le.PutUint16(s[ext4MntCount:], 3) }},
		{"check interval set", func(s []byte) { le.PutUint32(s[ext4CheckInterval:], 86400) }},
		{"not ext4", func(s []byte) { le.PutUint16(s[ext4Magic:], 0) }},
	} {
		s := append([]byte(nil), super...)
		tc.change(s)
		if ext4Clean(s) {
			t.Errorf("%s: the superblock passes as clean", tc.why)
		}
	}
	s := append([]byte(nil), super...)
	le.PutUint16(s[ext4MaxMntCount:], 3)
	le.PutUint16(s[ext4MntCount:], 2)
	if !ext4Clean(s) {
		t.Error("a mount count below its maximum does not pass as clean")
	}
}
