package loop

import (
	"context"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/blockvol/blockvol/hostexec"
)

// loopDevices binds images to loop devices and lets go of them.
//
//   - attach binds img to a free loop device and returns its path
//     (<dev>/loopN), as `losetup --find --show [--nooverlap] img` does. The
//     caller, holding the volume's lock, has looked for a device of img
//     already; overlap says whether another one may exist (one being
//     detached), which losetup's --nooverlap would hand back instead.
//   - detach asks the kernel to unbind dev, as `losetup --detach dev` does:
//     a device still held open is unbound when its last user closes it.
//   - inode returns the device and inode numbers of the file bound to dev
//     (LOOP_GET_STATUS64), ok false where they cannot be read.
type loopDevices interface {
	attach(ctx context.Context, img string, overlap bool) (string, error)
	detach(ctx context.Context, dev string) error
	inode(dev string) (devNo, ino uint64, ok bool)
}

// newLoopDevices returns kernelLoops when sys and dev are the kernel's own
// /sys and /dev (the devices the ioctl reads are the ones sysfs describes),
// and losetup alone otherwise (the tests' fake trees, whose runner scripts
// every losetup call).
func newLoopDevices(sys, dev string, run hostexec.Runner) loopDevices {
	prog := losetup{run}
	if sys == "/sys" && dev == "/dev" {
		return kernelLoops{prog}
	}
	return prog
}

// losetup runs losetup(8).
type losetup struct{ run hostexec.Runner }

func (l losetup) attach(ctx context.Context, img string, overlap bool) (string, error) {
	args := []string{"--find", "--show", "--nooverlap", img}
	if overlap {
		args = []string{"--find", "--show", img}
	}
	out, err := l.run.Run(ctx, "losetup", args...)
	if err != nil {
		return "", fmt.Errorf("losetup: %w", err)
	}
	dev := strings.TrimSpace(string(out))
	if !strings.HasPrefix(dev, "/") || strings.ContainsAny(dev, " \t\r\n") {
		return "", fmt.Errorf("losetup printed %q, not a device path", out)
	}
	return dev, nil
}

// inode: losetup drives the tests' fake trees, whose devices have no file.
func (l losetup) inode(string) (uint64, uint64, bool) { return 0, 0, false }

func (l losetup) detach(ctx context.Context, dev string) error {
	if _, err := l.run.Run(ctx, "losetup", "--detach", dev); err != nil {
		return fmt.Errorf("losetup --detach %s: %w", dev, err)
	}
	return nil
}

// kernelLoops binds and unbinds with losetup(8), whose runs the real-kernel
// tests (test/vm) interrupt to prove crash recovery, and reads a device's
// file identity with the kernel's LOOP_GET_STATUS64, which names the image
// even when the kernel's path for it is relative to a mount that is gone.
// (Binding with the ioctls themselves was tried and taken back: the VM
// scenarios that kill the plugin around losetup's runs no longer covered
// the bind, and a mount while a detach was pending left a device bound.)
type kernelLoops struct{ losetup }

func (kernelLoops) inode(dev string) (uint64, uint64, bool) {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, 0, false
	}
	defer unix.Close(fd)
	info, err := unix.IoctlLoopGetStatus64(fd)
	if err != nil {
		return 0, 0, false
	}
	return info.Device, info.Inode, true
}
