package loop

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/blockvol/blockvol/backends"
)

var _ backends.UnchangedProver = (*Backend)(nil)

// imageState tells one state of an image file from any other: its
// identity, size and times. A write through a loop device or to the file
// moves its modification time forward from the mark noteDetached sets;
// anything else done to it (truncate, chmod, a rename over it) changes its
// change time, size or identity.
type imageState struct {
	dev, ino     uint64
	size         int64
	mtime, ctime unix.Timespec
}

// statImage reads the state of the image at path, never following a
// symlink.
func statImage(path string) (imageState, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return imageState{}, fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return imageState{}, fmt.Errorf("%s is not a regular file", path)
	}
	return imageState{dev: st.Dev, ino: st.Ino, size: st.Size, mtime: st.Mtim, ctime: st.Ctim}, nil
}

// imageStates maps volume names to the state their image was left in
// (m made by New).
type imageStates struct {
	mu sync.Mutex
	m  map[string]imageState
}

func (s *imageStates) put(name string, st imageState) {
	s.mu.Lock()
	s.m[name] = st
	s.mu.Unlock()
}

// take returns name's state and forgets it: each is proof once.
func (s *imageStates) take(name string) (imageState, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.m[name]
	delete(s.m, name)
	return st, ok
}

func (s *imageStates) forget(name string) { s.take(name) }

// noteDetached remembers the state of name's image img after a Detach,
// when no loop device is bound to it any more (a device still open when
// it was detached stays bound until its last user closes it, and may
// still write); otherwise it forgets any state remembered. Called under
// name's lock.
func (b *Backend) noteDetached(log *slog.Logger, name, img string) {
	b.detached.forget(name)
	devs, err := b.devicesOfAny(img)
	if err != nil || len(devs) > 0 {
		return
	}
	// A write in the same tick of the kernel's coarse clock as the stat
	// would leave the image's times as they were: its modification time is
	// set a second back first, so that any later write moves it forward.
	mark := unix.NsecToTimespec(time.Now().Add(-time.Second).UnixNano())
	times := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, mark}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, img, times, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		log.Debug("image state not noted", slog.Any("error", err))
		return
	}
	st, err := statImage(img)
	if err != nil || st.mtime != mark {
		log.Debug("image state not noted", slog.Any("error", err))
		return
	}
	b.detached.put(name, st)
}

// ProvenUnchanged implements backends.UnchangedProver: dev is bound to
// name's image, and the image is in the state noted at the last Detach
// that left it unbound (noteDetached).
func (b *Backend) ProvenUnchanged(ctx context.Context, name, dev string) (bool, error) {
	const op = "check unchanged"
	unlock, img, bound, err := b.lockBound(ctx, op, name, dev)
	if err != nil {
		return false, err
	}
	defer unlock()
	was, ok := b.detached.take(name)
	if !ok || !bound {
		return false, nil
	}
	now, err := statImage(img)
	if err != nil {
		return false, opErr(op, name, err)
	}
	return now == was, nil
}
