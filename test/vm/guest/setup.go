package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The guest runs two tgtd instances on its loopback: one for the
// iscsitarget backend (default control port, standard iSCSI port) and one
// that the initiator scenario drives by hand, so that neither sees the
// other's targets.
const (
	targetPortal = "127.0.0.1:3260"
	directPortal = "127.0.0.1:3261"
	directCtl    = "1"
)

// setupGuest brings the guest up: loopback, modules, udev, tgtd, iscsid.
func setupGuest(s *S) error {
	if err := setupBase(s, "blockvol-vm"); err != nil {
		return err
	}
	if err := startTargets(s); err != nil {
		return err
	}
	return startIscsid(s)
}

// setupBase brings up what every guest needs: loopback, host name, kernel
// modules, udev.
func setupBase(s *S, hostname string) error {
	ctx := s.ctx
	if err := s.Step("loopback up, host name "+hostname, func() error {
		if _, err := run(ctx, "ip", "link", "set", "lo", "up"); err != nil {
			return err
		}
		_, err := run(ctx, "hostname", hostname)
		return err
	}); err != nil {
		return err
	}
	if err := s.Step("load kernel modules", func() error {
		b, err := os.ReadFile("/etc/vmtest/modules")
		if err != nil {
			return err
		}
		for _, m := range strings.Fields(string(b)) {
			if _, err := run(ctx, "modprobe", m); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return err
	}
	return s.Step("udevd, trigger, settle", func() error {
		if _, err := daemon("/run/vmtest/udevd.log", "/usr/lib/systemd/systemd-udevd", "--resolve-names=never"); err != nil {
			return err
		}
		if err := waitFor(ctx, 20*time.Second, 20*time.Millisecond, "udev control socket", func() (bool, error) {
			_, err := os.Stat("/run/udev/control")
			return err == nil, nil
		}); err != nil {
			return err
		}
		for _, args := range [][]string{
			{"trigger", "--type=subsystems", "--action=add"},
			{"trigger", "--type=devices", "--action=add"},
			{"settle", "--timeout=60"},
		} {
			if _, err := run(ctx, "udevadm", args...); err != nil {
				return err
			}
		}
		return nil
	})
}

// startTargets starts the guest's two tgtd instances.
func startTargets(s *S) error {
	ctx := s.ctx
	return s.Step("tgtd on "+targetPortal+" and "+directPortal, func() error {
		for _, t := range []struct{ ctl, portal string }{{"0", targetPortal}, {directCtl, directPortal}} {
			if _, err := daemon("/run/vmtest/tgtd."+t.ctl+".log", "tgtd", "-f", "-C", t.ctl, "--iscsi", "portal="+t.portal); err != nil {
				return err
			}
		}
		for _, ctl := range []string{"0", directCtl} {
			if err := waitFor(ctx, 20*time.Second, 50*time.Millisecond, "tgtd control port "+ctl, func() (bool, error) {
				_, err := run(ctx, "tgtadm", "-C", ctl, "--mode", "sys", "--op", "show")
				return err == nil, nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
}

// startIscsid starts iscsid and waits until it listens.
func startIscsid(s *S) error {
	ctx := s.ctx
	return s.Step("iscsid", func() error {
		if _, err := daemon("/run/vmtest/iscsid.log", "iscsid", "-f"); err != nil {
			return err
		}
		return waitFor(ctx, 20*time.Second, 20*time.Millisecond, "iscsid listening", func() (bool, error) {
			b, err := os.ReadFile("/proc/net/unix")
			return err == nil && strings.Contains(string(b), "@ISCSIADM_ABSTRACT_NAMESPACE"), nil
		})
	})
}

// tgtadm drives the tgtd behind control port ctl.
func tgtadm(ctx context.Context, ctl string, args ...string) error {
	_, err := run(ctx, "tgtadm", append([]string{"-C", ctl, "--lld", "iscsi"}, args...)...)
	return err
}

// leakCheck runs last: whatever the scenarios did, nothing of theirs may
// be left on the guest — no iSCSI session or node record, no loop device,
// no mount under /srv or /mnt, no plugin or tool process.
func leakCheck(s *S) error {
	if ss := sessions(""); len(ss) > 0 {
		s.Errorf("iSCSI sessions left: %v", ss)
	}
	out, err := run(s.ctx, "iscsiadm", "-m", "node")
	if exitCode(err) != 21 {
		s.Errorf("iSCSI node records left (iscsiadm -m node: %v): %s", err, strings.TrimSpace(out))
	}
	if l := loopDevices(); len(l) > 0 {
		s.Errorf("loop devices left: %v", l)
	}
	for _, dir := range []string{"/srv", "/mnt"} {
		for _, m := range mountsUnder(dir) {
			if m.point != "/srv" {
				s.Errorf("mount left: %s on %s (%s)", m.source, m.point, m.fstype)
			}
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/comm")
	for _, p := range procs {
		switch comm := readTrim(p); comm {
		case "blockvol", "iscsiadm", "mkfs.ext4", "mke2fs", "mkfs.xfs", "losetup", "e2fsck", "wipefs":
			s.Errorf("process left: %s (pid %s)", comm, filepath.Base(filepath.Dir(p)))
		}
	}
	return nil
}
