package fs

import (
	"encoding/binary"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Offsets and flags of the ext4 superblock (1024 bytes at byte 1024 of
// the device, little-endian), as the kernel's ext4.h names them.
const (
	ext4SuperOffset     = 1024
	ext4SuperSize       = 1024
	ext4MntCount        = 52  // s_mnt_count, u16
	ext4MaxMntCount     = 54  // s_max_mnt_count, s16
	ext4Magic           = 56  // s_magic, u16
	ext4State           = 58  // s_state, u16
	ext4CheckInterval   = 68  // s_checkinterval, u32
	ext4FeatureIncompat = 96  // s_feature_incompat, u32
	ext4FeatureROCompat = 100 // s_feature_ro_compat, u32
	ext4LastOrphan      = 232 // s_last_orphan, u32

	ext4SuperMagic      = 0xEF53
	ext4StateValid      = 0x0001 // cleanly unmounted
	ext4StateError      = 0x0002 // errors detected
	ext4IncompatRecover = 0x0004 // the journal needs a replay
	ext4IncompatJDev    = 0x0008 // an external journal device
	ext4ROOrphanPresent = 0x10000
)

// xfsMagic starts an xfs superblock, at byte 0 of the device.
const xfsMagic = "XFSB"

// Clean reports, from dev's superblock alone (read here, no program run),
// whether dev holds a filesystem of type fstype that needs nothing before
// a mount: for ext4, a superblock that `e2fsck -p` would pass as clean
// (cleanly unmounted, no errors recorded, no journal to replay, no orphan
// inodes, not due for a check by mount count; a check interval set counts
// as due, to stay on the safe side); for xfs, its superblock's magic (xfs
// is checked by the kernel's log recovery at mount, and Prepare runs no
// check on it either). false means "run Prepare", never an error.
//
// It is a cheaper Prepare only for a device the caller knows held fstype,
// cleanly unmounted, and unchanged since: it does not look for other
// signatures.
func (f *FS) Clean(dev, fstype string) (bool, error) {
	var sb []byte
	var off int64
	switch fstype {
	case "ext4":
		sb, off = make([]byte, ext4SuperSize), ext4SuperOffset
	case "xfs":
		sb = make([]byte, len(xfsMagic))
	default:
		return false, nil
	}
	file, err := os.OpenFile(dev, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return false, err
	}
	defer file.Close()
	if _, err := file.ReadAt(sb, off); err != nil {
		return false, fmt.Errorf("read the superblock of %s: %w", dev, err)
	}
	if fstype == "xfs" {
		return string(sb) == xfsMagic, nil
	}
	return ext4Clean(sb), nil
}

// ext4Clean reads an ext4 superblock as check_if_skip of e2fsck does for
// -p, and more strictly (see Clean).
func ext4Clean(sb []byte) bool {
	le := binary.LittleEndian
	state := le.Uint16(sb[ext4State:])
	maxMnt := int16(le.Uint16(sb[ext4MaxMntCount:]))
	switch {
	case le.Uint16(sb[ext4Magic:]) != ext4SuperMagic,
		state&ext4StateValid == 0,
		state&ext4StateError != 0,
		le.Uint32(sb[ext4FeatureIncompat:])&(ext4IncompatRecover|ext4IncompatJDev) != 0,
		le.Uint32(sb[ext4FeatureROCompat:])&ext4ROOrphanPresent != 0,
		le.Uint32(sb[ext4LastOrphan:]) != 0,
		maxMnt > 0 && int(le.Uint16(sb[ext4MntCount:])) >= int(maxMnt),
		le.Uint32(sb[ext4CheckInterval:]) != 0:
		return false
	}
	return true
}
