package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"
)

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	MountPoint string
	Options    string // per-mount options (nosuid, nodev, ...)
	FSType     string
	Source     string
}

// readMounts reads /proc/self/mountinfo (the host's view: bind mounts
// inside containers are in their own namespaces).
func readMounts() ([]mountEntry, error) {
	infos, err := mountinfo.GetMounts(nil)
	if err != nil {
		return nil, err
	}
	out := make([]mountEntry, 0, len(infos))
	for _, m := range infos {
		out = append(out, mountEntry{MountPoint: m.Mountpoint, Options: m.Options, FSType: m.FSType, Source: m.Source})
	}
	return out, nil
}

// mountsUnder returns the mounts whose mount point is dir or below it.
func mountsUnder(dir string) ([]mountEntry, error) {
	all, err := readMounts()
	if err != nil {
		return nil, err
	}
	var out []mountEntry
	for _, m := range all {
		if isUnder(m.MountPoint, dir) {
			out = append(out, m)
		}
	}
	return out, nil
}

// mountsOfSources returns the mounts whose source is one of devs.
func mountsOfSources(devs []string) ([]mountEntry, error) {
	all, err := readMounts()
	if err != nil {
		return nil, err
	}
	var out []mountEntry
	for _, m := range all {
		for _, d := range devs {
			if m.Source == d {
				out = append(out, m)
			}
		}
	}
	return out, nil
}

func isUnder(path, dir string) bool {
	dir = filepath.Clean(dir)
	return path == dir || strings.HasPrefix(path, dir+"/")
}

// loopDev is a loop device and the file behind it.
type loopDev struct {
	Dev     string // /dev/loopN
	Backing string // as sysfs shows it, " (deleted)" stripped
	Deleted bool
}

// loopsBackedUnder lists the loop devices whose backing file lies under dir,
// from sysfs (what `losetup -j` reads).
func loopsBackedUnder(dir string) ([]loopDev, error) {
	files, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		return nil, err
	}
	var out []loopDev
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // detached meanwhile
		}
		backing := strings.TrimSpace(string(b))
		deleted := strings.HasSuffix(backing, " (deleted)")
		backing = strings.TrimSuffix(backing, " (deleted)")
		if isUnder(backing, dir) {
			name := filepath.Base(filepath.Dir(filepath.Dir(f)))
			out = append(out, loopDev{Dev: "/dev/" + name, Backing: backing, Deleted: deleted})
		}
	}
	return out, nil
}

// regularFiles lists the regular files under dir (none if it is missing).
func regularFiles(dir string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(dir, func(path string, de os.DirEntry, err error) error {
		if err != nil {
			if isNotExist(err) {
				return nil
			}
			return err
		}
		if de.Type().IsRegular() {
			out = append(out, path)
		}
		return nil
	})
	return out, err
}

// cleanHost unmounts everything under root (deepest first, lazily), detaches
// the loop devices backed by files under root, and removes root if nothing
// is mounted there any more.
func cleanHost(root string) error {
	var errs []error
	loops, err := loopsBackedUnder(root)
	if err != nil {
		errs = append(errs, err)
	}
	var devs []string
	for _, l := range loops {
		devs = append(devs, l.Dev)
	}
	mounts, err := mountsUnder(root)
	if err != nil {
		return err
	}
	more, err := mountsOfSources(devs)
	if err != nil {
		return err
	}
	mounts = append(mounts, more...)
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].MountPoint) > len(mounts[j].MountPoint) })
	for _, m := range mounts {
		if err := syscall.Unmount(m.MountPoint, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m.MountPoint, err))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, l := range loops {
		if _, err := runCmd(ctx, "losetup", "-d", l.Dev); err != nil {
			errs = append(errs, err)
		}
	}
	left, err := mountsUnder(root)
	if err != nil {
		errs = append(errs, err)
	} else if len(left) > 0 {
		errs = append(errs, fmt.Errorf("%d mounts left under %s; not removing it", len(left), root))
	} else if err := os.RemoveAll(root); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// vmRSSKiB reads VmRSS of a process, in KiB.
func vmRSSKiB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}
