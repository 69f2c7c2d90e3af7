package loop

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/blockvol/blockvol/backends"
)

var _ backends.BlankProver = (*Backend)(nil)

// ProvenBlank implements backends.BlankProver: dev is bound to name's image
// and the image is all holes (lseek SEEK_DATA finds no data), after dev
// was flushed (fsync), so that what was written to the device and still
// sat in its page cache has reached the image. A hole reads as zeros; a
// data directory whose filesystem cannot tell holes (it reports the whole
// file as data) proves nothing, and the caller probes the device instead.
//
// The image a Create makes is all holes until its first mkfs; a clone or a
// restored snapshot holds the copied data.
func (b *Backend) ProvenBlank(ctx context.Context, name, dev string) (bool, error) {
	const op = "check blank"
	unlock, img, bound, err := b.lockBound(ctx, op, name, dev)
	if err != nil || !bound {
		return false, err
	}
	defer unlock()
	if err := flushDevice(dev); err != nil {
		return false, opErr(op, name, err)
	}
	blank, err := allHoles(img)
	if err != nil {
		return false, opErr(op, name, err)
	}
	return blank, nil
}

// lockBound takes name's lock and reports whether dev is bound to name's
// image, img. When it returns no error, the caller holds the lock until
// it calls unlock, bound or not; on an error it does not.
func (b *Backend) lockBound(ctx context.Context, op, name, dev string) (unlock func(), img string, bound bool, err error) {
	unlock, _, err = b.lock(ctx, op, name)
	if err != nil {
		return nil, "", false, err
	}
	img = b.imgPath(name)
	if bound, err = b.backedBy(dev, img, false); err != nil {
		unlock()
		return nil, "", false, opErr(op, name, err)
	}
	return unlock, img, bound, nil
}

// flushDevice writes dev's dirty page cache through to its backing file.
func flushDevice(dev string) error {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer unix.Close(fd)
	if err := unix.Fsync(fd); err != nil {
		return fmt.Errorf("flush %s: %w", dev, err)
	}
	return nil
}

// allHoles reports whether the file at path (never a symlink) is all holes.
func allHoles(path string) (bool, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return false, fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	_, err = unix.Seek(fd, 0, unix.SEEK_DATA)
	switch {
	case errors.Is(err, unix.ENXIO): // no data from offset 0 to the end
		return true, nil
	case err == nil: // data somewhere
		return false, nil
	case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP):
		return false, nil // SEEK_DATA unknown here: nothing proven
	}
	return false, fmt.Errorf("look for data in %s: %w", path, err)
}
