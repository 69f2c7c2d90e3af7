package fs

// Tool is a program this package runs, with the Debian package that
// provides it and what it is for.
type Tool struct{ Name, Package, Why string }

// Tools lists every program FS runs; `blockvol doctor` checks each.
var Tools = []Tool{
	{"blkid", "util-linux", "tells a blank device from a formatted one"},
	{"wipefs", "util-linux", "wipes an old filesystem when overwritefs=true"},
	{"mkfs.ext4", "e2fsprogs", "formats ext4 volumes"},
	{"e2fsck", "e2fsprogs", "checks an ext4 filesystem before mounting it"},
	{"mkfs.xfs", "xfsprogs", "formats xfs volumes"},
	{"fsfreeze", "util-linux", "freezes a mounted filesystem for the instant a snapshot is taken"},
	{"resize2fs", "e2fsprogs", "grows an ext4 filesystem when its volume grows"},
	{"tune2fs", "e2fsprogs", "gives an ext4 clone a new UUID"},
	{"xfs_growfs", "xfsprogs", "grows an xfs filesystem when its volume grows"},
	{"xfs_db", "xfsprogs", "gives an xfs clone a new UUID"},
}
