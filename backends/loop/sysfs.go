package loop

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// deletedSuffix is what the kernel appends to a loop device's backing_file
// when the file has been unlinked since: such a device is not backed by the
// current file of that name.
const deletedSuffix = " (deleted)"

// scanLoops reads <sys>/block/loop*/loop/backing_file once and maps each
// backing file path to the loop devices (<dev>/loopN, by increasing N) it
// backs. Unbound loop devices are left out; a device whose file was deleted
// is listed under "<path> (deleted)", as the kernel reports it, so it never
// counts as backed by a current file of that name.
func (b *Backend) scanLoops() (map[string][]string, error) {
	blockDir := filepath.Join(b.sys, "block")
	entries, err := os.ReadDir(blockDir)
	if err != nil {
		return nil, fmt.Errorf("read loop devices: %w", err)
	}
	type dev struct {
		n    int
		path string
	}
	byFile := make(map[string][]dev)
	for _, e := range entries {
		n, ok := loopNumber(e.Name())
		if !ok {
			continue
		}
		file, ok, err := b.backingFile(e.Name())
		if err != nil {
			return nil, err
		}
		if ok {
			byFile[file] = append(byFile[file], dev{n, filepath.Join(b.dev, e.Name())})
		}
	}
	out := make(map[string][]string, len(byFile))
	for file, devs := range byFile {
		sort.Slice(devs, func(i, j int) bool { return devs[i].n < devs[j].n })
		paths := make([]string, len(devs))
		for i, d := range devs {
			paths[i] = d.path
		}
		out[file] = paths
	}
	return out, nil
}

// devicesOf returns the loop devices backed by img, lowest number first.
func (b *Backend) devicesOf(img string) ([]string, error) {
	m, err := b.scanLoops()
	if err != nil {
		return nil, err
	}
	return m[img], nil
}

// devicesOfAny returns the loop devices backed by img or by an image of
// that path deleted since it was attached: what Detach must let go.
func (b *Backend) devicesOfAny(img string) ([]string, error) {
	m, err := b.scanLoops()
	if err != nil {
		return nil, err
	}
	return append(m[img], m[img+deletedSuffix]...), nil
}

// attachedNames returns the names of the volumes whose image, current or
// deleted, backs a loop device: every file of the data directory a loop
// device holds.
func (b *Backend) attachedNames() ([]string, error) {
	m, err := b.scanLoops()
	if err != nil {
		return nil, err
	}
	var names []string
	for file := range m {
		file = strings.TrimSuffix(file, deletedSuffix)
		base, ok := strings.CutPrefix(file, b.dir+string(filepath.Separator))
		name, isImg := strings.CutSuffix(base, imgSuffix)
		if ok && isImg && checkName(name) == nil && !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names, nil
}

// backedBy reports whether loop device dev (<dev>/loopN) is currently
// backed by img (deleted or not, when anyDeleted is true).
func (b *Backend) backedBy(dev, img string, anyDeleted bool) (bool, error) {
	file, ok, err := b.backingFile(filepath.Base(dev))
	if err != nil || !ok {
		return false, err
	}
	return file == img || anyDeleted && file == img+deletedSuffix, nil
}

// backingFile is the backing file of loop device name (loopN) as
// readBackingFile reads it, or, for a file the kernel names outside the
// data directory, the data directory's image it is (see adopted).
func (b *Backend) backingFile(name string) (string, bool, error) {
	file, ok, err := readBackingFile(filepath.Join(b.sys, "block", name))
	if err != nil || !ok || strings.HasPrefix(file, b.dir+string(filepath.Separator)) {
		return file, ok, err
	}
	return b.adopted(name, file), true, nil
}

// adopted returns the image of the data directory that loop device name
// is bound to although the kernel names its file otherwise, or file as it
// is. A device bound through a mount that no longer exists — the bind
// mount of the data directory in the container of a managed plugin that
// Docker restarted, the old container's mount namespace gone — is named
// relative to that mount ("/loop/<volume>.img"). It is this data
// directory's image of that base name when it is that very file: the same
// device and inode (LOOP_GET_STATUS64).
func (b *Backend) adopted(name, file string) string {
	if strings.HasSuffix(file, deletedSuffix) || !strings.HasSuffix(file, imgSuffix) {
		return file
	}
	devNo, ino, ok := b.loops.inode(filepath.Join(b.dev, name))
	if !ok {
		return file
	}
	img := filepath.Join(b.dir, filepath.Base(file))
	var st unix.Stat_t
	if err := unix.Lstat(img, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG ||
		uint64(st.Dev) != devNo || st.Ino != ino {
		return file
	}
	return img
}

// readBackingFile reads <devDir>/loop/backing_file, with the kernel's
// " (deleted)" suffix if any. ok is false when the device is not bound (no
// loop directory, or it vanished while being read).
func readBackingFile(devDir string) (file string, ok bool, err error) {
	data, err := os.ReadFile(filepath.Join(devDir, "loop", "backing_file"))
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENXIO) || errors.Is(err, unix.ENODEV) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("read loop device: %w", err)
	}
	file = strings.TrimSuffix(string(data), "\n")
	return file, file != "", nil
}

// loopNumber parses "loopN" (not partitions like "loop0p1").
func loopNumber(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, "loop")
	if !ok || rest == "" {
		return 0, false
	}
	for _, c := range rest {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(rest)
	return n, err == nil
}

// maxRecordSize bounds what readSmallFile accepts.
const maxRecordSize = 16 << 20

// atFDCWD makes readSmallFile resolve a path as open(2) would.
const atFDCWD = unix.AT_FDCWD

// readSmallFile is os.ReadFile for the many small records List reads, path
// being relative to directory dirfd (or atFDCWD): it makes three system
// calls instead of six (no poller registration, no fstat). Errors are
// *fs.PathError, so errors.Is(err, fs.ErrNotExist) works as with
// os.ReadFile.
func readSmallFile(dirfd int, path string) ([]byte, error) {
	var fd int
	var err error
	for {
		fd, err = unix.Openat(dirfd, path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	buf := make([]byte, 0, 1024)
	for {
		if len(buf) == cap(buf) {
			if len(buf) >= maxRecordSize {
				return nil, &fs.PathError{Op: "read", Path: path, Err: errors.New("file too large")}
			}
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := unix.Read(fd, buf[len(buf):cap(buf)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "read", Path: path, Err: err}
		}
		if n == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+n]
	}
}
