package loop

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Ways an image is copied, as inspect shows them.
const (
	copyReflink = "reflink"     // FICLONE: blocks shared until written
	copySparse  = "sparse copy" // data ranges copied, holes kept
)

// copyImage makes dst (a new, empty file of the caller's) a copy of src,
// sizeBytes long (at least src's size), durable. It shares blocks with a
// reflink when the data directory's filesystem can (xfs with reflink,
// btrfs), and otherwise copies only src's data ranges, keeping its holes.
// It returns which of the two it did.
func copyImage(dst, src *os.File, sizeBytes int64) (string, error) {
	how := copyReflink
	err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd()))
	if err != nil {
		if !noReflink(err) {
			return "", fmt.Errorf("reflink %s: %w", src.Name(), err)
		}
		how = copySparse
		if err := copySparseData(dst, src); err != nil {
			return "", err
		}
	}
	if err := dst.Truncate(sizeBytes); err != nil {
		return "", fmt.Errorf("size %s: %w", dst.Name(), err)
	}
	if err := dst.Sync(); err != nil {
		return "", fmt.Errorf("fsync %s: %w", dst.Name(), err)
	}
	return how, nil
}

// noReflink reports an FICLONE error that means "this filesystem cannot
// share blocks here", as opposed to a failure of the copy itself.
func noReflink(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY) ||
		errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS)
}

// copySparseData copies the data ranges of src (SEEK_DATA/SEEK_HOLE) into
// dst at the same offsets, with copy_file_range: holes stay holes, and the
// bytes never pass through this process.
func copySparseData(dst, src *os.File) error {
	fi, err := src.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	if err := dst.Truncate(size); err != nil {
		return fmt.Errorf("size %s: %w", dst.Name(), err)
	}
	sfd, dfd := int(src.Fd()), int(dst.Fd())
	for off := int64(0); off < size; {
		start, err := unix.Seek(sfd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) { // no data past off
			return nil
		}
		if err != nil {
			return fmt.Errorf("find data in %s: %w", src.Name(), err)
		}
		end, err := unix.Seek(sfd, start, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("find a hole in %s: %w", src.Name(), err)
		}
		if err := copyRange(dfd, sfd, start, end); err != nil {
			return fmt.Errorf("copy %s: %w", src.Name(), err)
		}
		off = end
	}
	return nil
}

// copyRange copies bytes [start, end) of sfd to the same offsets of dfd.
func copyRange(dfd, sfd int, start, end int64) error {
	roff, woff := start, start
	for roff < end {
		n, err := unix.CopyFileRange(sfd, &roff, dfd, &woff, int(min(end-roff, 1<<30)), 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
	}
	return nil
}

// reflinkProbePrefix starts the names of probeReflink's scratch files.
const reflinkProbePrefix = ".reflink-probe-"

// probeReflink reports whether dir's filesystem shares blocks on FICLONE,
// with two scratch files that are removed again.
func probeReflink(dir string) bool {
	a, err := os.CreateTemp(dir, reflinkProbePrefix+"*")
	if err != nil {
		return false
	}
	defer os.Remove(a.Name())
	defer a.Close()
	b, err := os.CreateTemp(dir, reflinkProbePrefix+"*")
	if err != nil {
		return false
	}
	defer os.Remove(b.Name())
	defer b.Close()
	if _, err := a.Write(make([]byte, 4096)); err != nil {
		return false
	}
	return unix.IoctlFileClone(int(b.Fd()), int(a.Fd())) == nil
}
