package iscsi

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// mountEntry is the part of one mountinfo line used here.
type mountEntry struct {
	majmin string // "8:16"
	source string // "/dev/sdb1"
	point  string
}

// readMountInfo parses a /proc/<pid>/mountinfo file:
//
//	36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//
// field 3 is the device number, the source follows the fstype after " - ".
func readMountInfo(path string) ([]mountEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	defer f.Close()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for k := 6; k < len(fields); k++ {
			if fields[k] == "-" {
				sep = k
				break
			}
		}
		if len(fields) < 5 || sep < 0 || sep+2 >= len(fields) {
			continue
		}
		out = append(out, mountEntry{
			majmin: fields[2],
			source: unescapeMount(fields[sep+2]),
			point:  unescapeMount(fields[4]),
		})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mount table %s: %w", path, err)
	}
	return out, nil
}

// unescapeMount undoes the kernel's octal escaping (\040 for a space, ...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for k := 0; k < len(s); k++ {
		if s[k] == '\\' && k+3 < len(s) {
			if n, err := strconv.ParseUint(s[k+1:k+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				k += 3
				continue
			}
		}
		b.WriteByte(s[k])
	}
	return b.String()
}

// usage decides whether block devices are in use: mounted (by device
// number or by source path), or held by another device. A dm multipath map
// holding a path does not by itself make the path busy — multipathd builds
// one for every LUN it sees — but the map counts as used when it is mounted,
// partitioned and a partition is used, or held (LVM, dm-crypt, ...).
type usage struct {
	i      *Initiator
	mounts []mountEntry
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
		return fmt.Sprintf("%s is mounted on %s", name, m.point)
	}
	for _, part := range u.i.partitions(name) {
		pn := filepath.Base(part)
		if m, ok := u.mounted(part, pn); ok {
			return fmt.Sprintf("%s is mounted on %s", pn, m.point)
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
func (u usage) mounted(dir, name string) (mountEntry, bool) {
	dev := readAttr(filepath.Join(dir, "dev"))
	var aliases []string
	if dm := readAttr(filepath.Join(dir, "dm", "name")); dm != "" {
		aliases = append(aliases, "/dev/mapper/"+dm)
	}
	for _, m := range u.mounts {
		if dev != "" && m.majmin == dev {
			return m, true
		}
		if u.sourceIs(m.source, name, aliases) {
			return m, true
		}
	}
	return mountEntry{}, false
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
