package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/iscsi"
)

// The initiator scenario drives blockvol's iscsi package directly against
// the second tgtd (control port directCtl), with the real iscsid and
// iscsiadm, and checks what the kernel really does.
const (
	directIQN     = "iqn.2024-01.test.vm:direct"
	directCHAPIQN = "iqn.2024-01.test.vm:chap"
	lunBytes      = 512 << 20
)

// newTarget creates target tid on the tgtd of ctl with one sparse
// 512 MiB file per LUN, open to every initiator.
func newTarget(ctx context.Context, ctl string, tid int, iqn, dir string, luns ...int) error {
	if err := tgtadm(ctx, ctl, "--op", "new", "--mode", "target", "--tid", fmt.Sprint(tid), "-T", iqn); err != nil {
		return err
	}
	for _, l := range luns {
		if err := addLUN(ctx, ctl, tid, dir, l); err != nil {
			return err
		}
	}
	return tgtadm(ctx, ctl, "--op", "bind", "--mode", "target", "--tid", fmt.Sprint(tid), "-I", "ALL")
}

func addLUN(ctx context.Context, ctl string, tid int, dir string, lun int) error {
	img := filepath.Join(dir, fmt.Sprintf("tid%d-lun%d.img", tid, lun))
	f, err := os.Create(img)
	if err != nil {
		return err
	}
	if err := f.Truncate(lunBytes); err != nil {
		f.Close()
		return err
	}
	f.Close()
	return tgtadm(ctx, ctl, "--op", "new", "--mode", "logicalunit", "--tid", fmt.Sprint(tid), "--lun", fmt.Sprint(lun), "-b", img)
}

// deleteTarget removes a target, sessions or not.
func deleteTarget(ctl string, tid int) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tgtadm(ctx, ctl, "--op", "delete", "--mode", "target", "--tid", fmt.Sprint(tid), "--force")
}

// checkLUN verifies that dev is LUN lun of a session of iqn, 512 MiB.
func checkLUN(dev, iqn string, lun int) (string, error) {
	name, err := blockName(dev)
	if err != nil {
		return "", err
	}
	for _, s := range sessions(iqn) {
		if s.luns[lun] == name {
			if n := deviceBytes(name); n != lunBytes {
				return name, fmt.Errorf("%s (%s) has %d bytes, want %d", dev, name, n, lunBytes)
			}
			return name, nil
		}
	}
	return name, fmt.Errorf("%s (%s) is not LUN %d of any session of %s (sessions: %v)", dev, name, lun, iqn, sessions(""))
}

// formatMount makes fstype on dev and mounts it at dir.
func formatMount(ctx context.Context, dev, fstype, dir string) error {
	var err error
	switch fstype {
	case "ext4":
		_, err = run(ctx, "mkfs.ext4", "-q", "-F", dev)
	case "xfs":
		_, err = run(ctx, "mkfs.xfs", "-q", "-f", dev)
	case "swap":
		_, err = run(ctx, "mkswap", dev)
		return err
	default:
		err = fmt.Errorf("unknown fstype %s", fstype)
	}
	if err != nil {
		return err
	}
	return mountDev(dev, fstype, dir)
}

func mountDev(dev, fstype, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := syscall.Mount(dev, dir, fstype, 0, ""); err != nil {
		return fmt.Errorf("mount %s on %s (%s): %w", dev, dir, fstype, err)
	}
	return nil
}

func unmount(dir string) error {
	if err := syscall.Unmount(dir, 0); err != nil {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	return nil
}

// nodeRecord reports whether iscsiadm has a node record for iqn.
func nodeRecord(ctx context.Context, iqn string) (bool, error) {
	_, err := run(ctx, "iscsiadm", "-m", "node", "-T", iqn)
	switch exitCode(err) {
	case -1:
		if err == nil {
			return true, nil
		}
		return false, err
	case 21: // ISCSI_ERR_NO_OBJS_FOUND
		return false, nil
	}
	return false, err
}

// noSessionNoRecord checks that iqn left nothing behind.
func noSessionNoRecord(ctx context.Context, iqn string) error {
	if ss := sessions(iqn); len(ss) > 0 {
		return fmt.Errorf("iSCSI sessions of %s left: %v", iqn, ss)
	}
	rec, err := nodeRecord(ctx, iqn)
	if err != nil {
		return err
	}
	if rec {
		return fmt.Errorf("node record of %s left behind", iqn)
	}
	return nil
}

// initiatorLog opens the log of one scenario's iscsi package, printed when
// it fails.
func initiatorLog(s *S) *slog.Logger {
	path := "/run/vmtest/" + s.name + ".iscsi.log"
	f, err := os.Create(path)
	if err != nil {
		return nil
	}
	s.Cleanup(func() { f.Close() })
	s.OnFailure(func() { s.r.detail("iscsi package log "+path+" (last 40 lines)", tail(path, 40)) })
	return slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func scenarioInitiator(s *S) error {
	ctx := s.ctx
	dir := "/srv/" + s.name
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	log := initiatorLog(s)
	newInitiator := func(c iscsi.Config) *iscsi.Initiator {
		ini, err := iscsi.New(c, hostexec.OS{}, log)
		if err != nil {
			panic(err)
		}
		return ini
	}
	ini := newInitiator(iscsi.Config{LoginTimeout: 20 * time.Second, DeviceTimeout: 20 * time.Second, LogoutTimeout: 20 * time.Second})
	lun := func(n int) iscsi.Target {
		return iscsi.Target{IQN: directIQN, Portals: []string{directPortal}, LUN: n}
	}
	mnt := func(n int) string { return fmt.Sprintf("/mnt/%s/lun%d", s.name, n) }

	if err := s.Step("tgtd target "+directIQN+" with LUNs 1 and 2", func() error {
		return newTarget(ctx, directCtl, 1, directIQN, dir, 1, 2)
	}); err != nil {
		return err
	}
	s.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for n := 1; n <= 3; n++ {
			syscall.Unmount(mnt(n), 0)
		}
		for n := 1; n <= 3; n++ {
			ini.Detach(ctx, lun(n))
		}
		deleteTarget(directCtl, 1)
	})

	if err := s.Step("InitiatorName reads /etc/iscsi/initiatorname.iscsi", func() error {
		name, err := ini.InitiatorName()
		if err == nil && name != "iqn.2024-01.test.vm:initiator" {
			err = fmt.Errorf("got %q", name)
		}
		return err
	}); err != nil {
		return err
	}

	devs := map[int]string{}
	attach := func(n int, t iscsi.Target) error {
		t0 := time.Now()
		dev, err := ini.Attach(ctx, t)
		d := time.Since(t0)
		if err != nil {
			return err
		}
		name, err := checkLUN(dev, t.IQN, n)
		if err != nil {
			return err
		}
		devs[n] = dev
		s.Note("LUN %d is %s (%s), Attach took %s", n, dev, name, secs(d))
		return nil
	}
	if err := s.Step("Attach LUN 1: node record, login, device in sysfs", func() error {
		t0 := time.Now()
		err := attach(1, lun(1))
		s.Time("login-to-device", time.Since(t0))
		return err
	}); err != nil {
		return err
	}
	var sum1 string
	if err := s.Step("mkfs.ext4, mount and write on LUN 1", func() error {
		if err := formatMount(ctx, devs[1], "ext4", mnt(1)); err != nil {
			return err
		}
		var err error
		sum1, err = writeData(mnt(1)+"/data", 1)
		return err
	}); err != nil {
		return err
	}
	if err := s.Step("Attach LUN 2 while the session exists (iscsiadm exit 15, rescan)", func() error {
		if err := attach(2, lun(2)); err != nil {
			return err
		}
		if devs[2] == devs[1] {
			return fmt.Errorf("LUN 2 got LUN 1's device %s", devs[1])
		}
		if n := len(sessions(directIQN)); n != 1 {
			return fmt.Errorf("%d sessions of %s, want 1", n, directIQN)
		}
		return nil
	}); err != nil {
		return err
	}
	var sum2 string
	if err := s.Step("mkfs.xfs, mount and write on LUN 2", func() error {
		if err := formatMount(ctx, devs[2], "xfs", mnt(2)); err != nil {
			return err
		}
		var err error
		sum2, err = writeData(mnt(2)+"/data", 2)
		return err
	}); err != nil {
		return err
	}
	if err := s.Step("add LUN 3 to the live target; Attach LUN 3 finds it by rescanning", func() error {
		if err := addLUN(ctx, directCtl, 1, dir, 3); err != nil {
			return err
		}
		t0 := time.Now()
		err := attach(3, lun(3))
		s.Time("rescan-to-device", time.Since(t0))
		return err
	}); err != nil {
		return err
	}
	if err := s.Step("Detach LUN 1 while it is mounted is refused with ErrInUse", func() error {
		err := ini.Detach(ctx, lun(1))
		if !errors.Is(err, sentinel.ErrInUse) {
			return fmt.Errorf("Detach = %v, want ErrInUse", err)
		}
		s.Note("Detach said: %v", err)
		if _, ok := mountAt(mnt(1)); !ok {
			return errors.New("LUN 1 is no longer mounted")
		}
		if len(sessions(directIQN)) != 1 {
			return errors.New("the session is gone")
		}
		return nil
	}); err != nil {
		return err
	}
	if err := s.Step("unmount LUN 1; Detach LUN 1 keeps the session for mounted LUN 2 and drops LUN 1's disk", func() error {
		if err := unmount(mnt(1)); err != nil {
			return err
		}
		if err := ini.Detach(ctx, lun(1)); err != nil {
			return err
		}
		ss := sessions(directIQN)
		if len(ss) != 1 {
			return fmt.Errorf("sessions after Detach of LUN 1: %v, want one", ss)
		}
		if d, ok := ss[0].luns[1]; ok {
			return fmt.Errorf("LUN 1's disk %s is still there", d)
		}
		if _, ok := ss[0].luns[2]; !ok {
			return fmt.Errorf("LUN 2's disk is gone: %v", ss[0])
		}
		return nil
	}); err != nil {
		return err
	}
	if err := s.Step("LUN 2 stays usable: read back, write more, drop caches, read again", func() error {
		got, err := sumFile(mnt(2) + "/data")
		if err != nil {
			return err
		}
		if got != sum2 {
			return fmt.Errorf("LUN 2 data changed: %s, want %s", got, sum2)
		}
		sum, err := writeData(mnt(2)+"/more", 22)
		if err != nil {
			return err
		}
		if err := dropCaches(); err != nil {
			return err
		}
		if got, err := sumFile(mnt(2) + "/more"); err != nil || got != sum {
			return fmt.Errorf("read back %s, %v; want %s", got, err, sum)
		}
		return nil
	}); err != nil {
		return err
	}
	if err := s.Step("Detach LUN 3 (never mounted) keeps the session and drops its disk", func() error {
		if err := ini.Detach(ctx, lun(3)); err != nil {
			return err
		}
		ss := sessions(directIQN)
		if len(ss) != 1 {
			return fmt.Errorf("sessions: %v", ss)
		}
		if d, ok := ss[0].luns[3]; ok {
			return fmt.Errorf("LUN 3's disk %s is still there", d)
		}
		return nil
	}); err != nil {
		return err
	}
	if err := s.Step("unmount LUN 2; Detach LUN 2 logs out and deletes the node record", func() error {
		if err := unmount(mnt(2)); err != nil {
			return err
		}
		t0 := time.Now()
		if err := ini.Detach(ctx, lun(2)); err != nil {
			return err
		}
		s.Time("logout", time.Since(t0))
		return noSessionNoRecord(ctx, directIQN)
	}); err != nil {
		return err
	}
	if err := s.Step("Detach LUN 2 again succeeds and changes nothing", func() error {
		return ini.Detach(ctx, lun(2))
	}); err != nil {
		return err
	}
	if err := s.Step("Attach LUNs 1 and 2 at once, with sendtargets discovery: one session, two disks", func() error {
		var wg sync.WaitGroup
		res := make([]string, 3)
		errs := make([]error, 3)
		for _, n := range []int{1, 2} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				t := lun(n)
				t.Discovery = true
				res[n], errs[n] = ini.Attach(ctx, t)
			}()
		}
		wg.Wait()
		if err := errors.Join(errs[1], errs[2]); err != nil {
			return err
		}
		for _, n := range []int{1, 2} {
			if _, err := checkLUN(res[n], directIQN, n); err != nil {
				return err
			}
			devs[n] = res[n]
		}
		if ss := sessions(directIQN); len(ss) != 1 {
			return fmt.Errorf("sessions: %v, want one", ss)
		}
		return nil
	}); err != nil {
		return err
	}
	if err := s.Step("LUN 1's data survived logout and login", func() error {
		if err := mountDev(devs[1], "ext4", mnt(1)); err != nil {
			return err
		}
		got, err := sumFile(mnt(1) + "/data")
		if err == nil && got != sum1 {
			err = fmt.Errorf("LUN 1 data: %s, want %s", got, sum1)
		}
		return errors.Join(err, unmount(mnt(1)))
	}); err != nil {
		return err
	}
	if err := s.Step("Detach LUNs 1 and 2: logged out, no record", func() error {
		if err := errors.Join(ini.Detach(ctx, lun(1)), ini.Detach(ctx, lun(2))); err != nil {
			return err
		}
		return noSessionNoRecord(ctx, directIQN)
	}); err != nil {
		return err
	}

	// Failures, as the real iscsiadm reports them.
	if err := s.Step("login to a target the portal does not have fails; Detach cleans up", func() error {
		t := iscsi.Target{IQN: "iqn.2024-01.test.vm:nosuch", Portals: []string{directPortal}, LUN: 1}
		_, err := ini.Attach(ctx, t)
		if err == nil {
			return errors.New("Attach succeeded")
		}
		s.Note("Attach said: %v (class %s)", err, errClass(err))
		if !errors.Is(err, iscsi.ErrNoTarget) && !errors.Is(err, iscsi.ErrAuth) {
			s.Errorf("unknown target: error class %s, want ErrNotFound or ErrAuth: %v", errClass(err), err)
		}
		if err := ini.Detach(ctx, t); err != nil {
			return err
		}
		return noSessionNoRecord(ctx, t.IQN)
	}); err != nil {
		return err
	}
	if err := s.Step("a LUN the target does not have: ErrDeviceNotFound after DeviceTimeout; Detach logs out", func() error {
		short := newInitiator(iscsi.Config{LoginTimeout: 20 * time.Second, DeviceTimeout: 2 * time.Second})
		t := lun(9)
		t0 := time.Now()
		_, err := short.Attach(ctx, t)
		d := time.Since(t0)
		s.Note("Attach said after %s: %v", secs(d), err)
		if !errors.Is(err, iscsi.ErrDeviceNotFound) {
			return fmt.Errorf("Attach = %v, want ErrDeviceNotFound", err)
		}
		if d > 15*time.Second {
			s.Errorf("Attach of a missing LUN took %s with DeviceTimeout 2s", d)
		}
		if err := short.Detach(ctx, t); err != nil {
			return err
		}
		return noSessionNoRecord(ctx, directIQN)
	}); err != nil {
		return err
	}
	if err := s.Step("an unreachable portal fails within LoginTimeout, leaving no session", func() error {
		short := newInitiator(iscsi.Config{LoginTimeout: 5 * time.Second})
		t := iscsi.Target{IQN: directIQN, Portals: []string{"127.0.0.1:3299"}, LUN: 1}
		t0 := time.Now()
		_, err := short.Attach(ctx, t)
		d := time.Since(t0)
		s.Note("Attach said after %s: %v (class %s)", secs(d), err, errClass(err))
		if err == nil {
			return errors.New("Attach succeeded")
		}
		if !errors.Is(err, iscsi.ErrUnreachable) && !errors.Is(err, iscsi.ErrTimeout) {
			s.Errorf("unreachable portal: error class %s, want ErrUnreachable or ErrTimeout: %v", errClass(err), err)
		}
		if d > 20*time.Second {
			s.Errorf("Attach to an unreachable portal took %s with LoginTimeout 5s", d)
		}
		if err := short.Detach(ctx, t); err != nil {
			return err
		}
		return noSessionNoRecord(ctx, directIQN)
	}); err != nil {
		return err
	}
	return chapChecks(s, ini, dir)
}

// chapChecks attaches a target that requires CHAP with the right and with
// a wrong password.
func chapChecks(s *S, ini *iscsi.Initiator, dir string) error {
	ctx := s.ctx
	const user, pass, wrong = "vmuser", "vmtest-secret-42", "not-the-secret-7"
	if err := s.Step("tgtd target "+directCHAPIQN+" requiring CHAP", func() error {
		if err := newTarget(ctx, directCtl, 2, directCHAPIQN, dir, 1); err != nil {
			return err
		}
		if err := tgtadm(ctx, directCtl, "--op", "new", "--mode", "account", "--user", user, "--password", pass); err != nil {
			return err
		}
		return tgtadm(ctx, directCtl, "--op", "bind", "--mode", "account", "--tid", "2", "--user", user)
	}); err != nil {
		return err
	}
	t := iscsi.Target{IQN: directCHAPIQN, Portals: []string{directPortal}, LUN: 1}
	s.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		ini.Detach(ctx, t)
		deleteTarget(directCtl, 2)
		tgtadm(ctx, directCtl, "--op", "delete", "--mode", "account", "--user", user)
	})
	if err := s.Step("without credentials the login is refused", func() error {
		_, err := ini.Attach(ctx, t)
		s.Note("Attach said: %v (class %s)", err, errClass(err))
		if err == nil {
			return errors.New("Attach succeeded without CHAP")
		}
		if !errors.Is(err, iscsi.ErrAuth) {
			s.Errorf("no CHAP: error class %s, want ErrAuth: %v", errClass(err), err)
		}
		return ini.Detach(ctx, t)
	}); err != nil {
		return err
	}
	if err := s.Step("a wrong password is refused with ErrAuth and never shown", func() error {
		bad := t
		bad.CHAP = &iscsi.CHAP{Username: user, Password: wrong}
		_, err := ini.Attach(ctx, bad)
		s.Note("Attach said: %v (class %s)", err, errClass(err))
		if err == nil {
			return errors.New("Attach succeeded with a wrong password")
		}
		if !errors.Is(err, iscsi.ErrAuth) {
			s.Errorf("wrong CHAP password: error class %s, want ErrAuth: %v", errClass(err), err)
		}
		if strings.Contains(fmt.Sprintf("%v %+v", err, err), wrong) {
			s.Errorf("the error shows the CHAP password: %v", err)
		}
		return ini.Detach(ctx, bad)
	}); err != nil {
		return err
	}
	return s.Step("the right password attaches; Detach logs out and drops the record", func() error {
		good := t
		good.CHAP = &iscsi.CHAP{Username: user, Password: pass}
		dev, err := ini.Attach(ctx, good)
		if err != nil {
			return err
		}
		if _, err := checkLUN(dev, directCHAPIQN, 1); err != nil {
			return err
		}
		if err := ini.Detach(ctx, good); err != nil {
			return err
		}
		return noSessionNoRecord(ctx, directCHAPIQN)
	})
}

// errClass names the iscsi sentinel an error wraps.
func errClass(err error) string {
	for _, c := range []struct {
		name string
		err  error
	}{
		{"ErrInvalid", sentinel.ErrInvalid}, {"ErrAuth", iscsi.ErrAuth}, {"ErrTimeout", iscsi.ErrTimeout},
		{"ErrUnreachable", iscsi.ErrUnreachable}, {"ErrNotFound", iscsi.ErrNoTarget}, {"ErrDaemon", iscsi.ErrDaemon},
		{"ErrDeviceNotFound", iscsi.ErrDeviceNotFound}, {"ErrInUse", sentinel.ErrInUse},
	} {
		if errors.Is(err, c.err) {
			return c.name
		}
	}
	return "none"
}
