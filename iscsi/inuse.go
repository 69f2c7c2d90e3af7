package iscsi

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/moby/sys/mountinfo"
)

// usage decides whether block devices are in use: mounted (by device
// number or by source path), or held by another device. A dm multipath map
// holding a path does not by itself make the path busy — multipathd builds
// one for every LUN it sees — but the map counts as used when it is mounted,
// partitioned and a partition is used, or held (LVM, dm-crypt, ...).
type usage struct {
	i      *Initiator
	mounts []*mountinfo.Info
}

// whyBusy returns why the block device name (a disk or dm map under
// SysRoot/block) is in use, or "" when it is not.
func (u usage) whyBusy(name string) string {
	return u.why(name, 0)
}

func (u usage) why(name string, depth int) string {
	if depth > 8 { // a holder chain this deep is a loop or absurd: be safe
		return name + " has a deep holder chain"
	}
	dir := u.i.sys("block", name)
	if m, ok := u.mounted(dir, name); ok {
		return fmt.Sprintf("%s is mounted on %s", name, m.Mountpoint)
	}
	for _, part := range u.i.partitions(name) {
		pn := filepath.Base(part)
		if m, ok := u.mounted(part, pn); ok {
			return fmt.Sprintf("%s is mounted on %s", pn, m.Mountpoint)
		}
		if hs := holders(part); len(hs) > 0 {
			return fmt.Sprintf("%s is held by %s", pn, strings.Join(hs, ", "))
		}
	}
	for _, h := range holders(dir) {
		if u.i.isMultipath(h) {
			if r := u.why(h, depth+1); r != "" {
				return r
			}
			continue
		}
		return fmt.Sprintf("%s is held by %s", name, h)
	}
	return ""
}

// mounted reports the first mount whose source is the device whose sysfs
// directory is dir.
func (u usage) mounted(dir, name string) (*mountinfo.Info, bool) {
	dev := readAttr(filepath.Join(dir, "dev"))
	var aliases []string
	if dm := readAttr(filepath.Join(dir, "dm", "name")); dm != "" {
		aliases = append(aliases, "/dev/mapper/"+dm)
	}
	for _, m := range u.mounts {
		if dev != "" && fmt.Sprintf("%d:%d", m.Major, m.Minor) == dev {
			return m, true
		}
		if u.sourceIs(m.Source, name, aliases) {
			return m, true
		}
	}
	return nil, false
}

// sourceIs reports whether a mount source names device name: /dev/<name>,
// an alias, or a link under /dev (by-path, by-id, mapper) resolving to it.
func (u usage) sourceIs(source, name string, aliases []string) bool {
	if !strings.HasPrefix(source, "/dev/") {
		return false
	}
	if source == "/dev/"+name {
		return true
	}
	for _, a := range aliases {
		if source == a {
			return true
		}
	}
	return resolvesTo(filepath.Join(u.i.cfg.DevRoot, strings.TrimPrefix(source, "/dev/")), name)
}
