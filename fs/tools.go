package fs

// Tool is a program this package runs, with the Debian package that
// provides it and what it is for.
type Tool struct{ Name, Package, Why string }

// Tools lists every program FS runs; `blockvol doctor` checks each.
var Tools = []Tool{
	{"blkid", "util-linux", "tells a blank device from a formatted one"},
	{"blockdev", "util-linux", "tells a read-only device before formatting it"},
	{"wipefs", "util-linux", "wipes an old filesystem when overwritefs=true"},
	{"mkfs.ext4", "e2fsprogs", "formats ext4 volumes"},
	{"e2fsck", "e2fsprogs", "checks an ext4 filesystem before mounting it"},
	{"mkfs.xfs", "xfsprogs", "formats xfs volumes"},
}
