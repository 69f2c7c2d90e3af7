package fs

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// mountEntry is one line of /proc/<pid>/mountinfo, unescaped.
type mountEntry struct {
	Target  string // mount point
	Options string // per-mount options (rw,nosuid,nodev,...)
	FSType  string
	Source  string // device, or whatever the filesystem reports
}

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
func (f *FS) mountAt(target string) (*mountEntry, error) {
	data, err := os.ReadFile(f.mountInfoPath())
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	entries, err := parseMountInfo(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("read mount table %s: %w", f.mountInfoPath(), err)
	}
	target = filepath.Clean(target)
	var found *mountEntry
	for i := range entries {
		if entries[i].Target == target {
			found = &entries[i]
		}
	}
	return found, nil
}

// parseMountInfo parses the mountinfo format (proc(5)):
//
//	36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//	(1)(2)(3)   (4)   (5)         (6)      (7)     (8) (9)   (10)      (11)
//
// Field 7 is zero or more optional fields closed by the "-" separator.
func parseMountInfo(r io.Reader) ([]mountEntry, error) {
	var entries []mountEntry
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		fields := strings.Split(line, " ")
		sep := -1
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+2 >= len(fields) {
			return nil, fmt.Errorf("line %d: malformed mountinfo line %q", n, line)
		}
		entries = append(entries, mountEntry{
			Target:  unescapeOctal(fields[4]),
			Options: fields[5],
			FSType:  unescapeOctal(fields[sep+1]),
			Source:  unescapeOctal(fields[sep+2]),
		})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return entries, nil
}

// unescapeOctal undoes the kernel's escaping of space, tab, newline and
// backslash as \040, \011, \012 and \134 (any \ooo is decoded).
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && s[i+1] >= '0' && s[i+1] <= '3' && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
