package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// loopPendingDetach: `losetup --detach` of a loop device that another
// process still holds open (udev probing it after a write, blkid, lsblk
// from a monitoring agent) only marks it for autoclear; the device stays
// backed by the image until that process closes it. A Mount of the volume
// in that window must still work: the loop backend must not hand out the
// dying device, which vanishes under the plugin's blkid/mkfs/mount.
//
// The scenario makes the window exact: a holder process keeps the device
// open, the device is detached by hand, and a hook kills the holder right
// before the plugin's mkfs (a fresh volume's image of holes is formatted
// without a blkid probe) and waits until the device is gone. (The
// holder also gives up after 20 s, so that a backend that waits for the
// dying device instead of reusing it passes too.)
func loopPendingDetach(s *S) error {
	b := loopBackend()
	const vol = "lazy"
	id := mountID(1)
	p, v, err := pluginWithVolume(s, b, vol, map[string]string{"size": "512M", "fstype": "ext4"})
	if err != nil {
		return err
	}
	img := v.status("image")
	var dev string
	var holder *exec.Cmd
	if err := s.Step("attach the image by hand, hold the device open, losetup --detach: autoclear pending", func() error {
		out, err := run(s.ctx, "losetup", "--find", "--show", img)
		if err != nil {
			return err
		}
		dev = strings.TrimSpace(out)
		f, err := os.Open(dev)
		if err != nil {
			return err
		}
		defer f.Close()
		holder = exec.Command("sleep", "20")
		holder.Stdin = f
		if err := holder.Start(); err != nil {
			return err
		}
		go holder.Wait()
		s.Cleanup(func() { holder.Process.Kill() })
		if _, err := run(s.ctx, "losetup", "--detach", dev); err != nil {
			return err
		}
		sys := filepath.Join("/sys/block", filepath.Base(dev), "loop")
		if readTrim(sys+"/autoclear") != "1" || readTrim(sys+"/backing_file") != img {
			return fmt.Errorf("%s: autoclear %q, backing file %q: the detach was not deferred", dev, readTrim(sys+"/autoclear"), readTrim(sys+"/backing_file"))
		}
		s.Note("%s is backed by %s, autoclear pending", dev, img)
		return nil
	}); err != nil {
		return err
	}
	sysBacking := filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file")
	if err := armReleaseHook("mkfs.ext4", "-F", holder.Process.Pid, sysBacking); err != nil {
		return err
	}
	mp, err := mountStep(s, p, b, "Mount "+vol+" while that detach is pending (the dying device vanishes before mkfs)", vol, id, "ext4", true)
	if err != nil {
		var pe *pluginError
		if errors.As(err, &pe) {
			s.Note("the loop backend handed out %s, a device already being detached", dev)
		}
		return err
	}
	if err := s.Step("write", func() error {
		_, err := writeData(mp+"/data", 9)
		return err
	}); err != nil {
		return err
	}
	syscall.Sync()
	return unmountStep(s, p, b, vol, id)
}
