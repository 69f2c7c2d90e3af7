package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/iscsi"
)

// targetBackend is the tgt-based iscsitarget backend, against the guest's
// first tgtd (control port 0, portal targetPortal). Until cmd/blockvol
// knows the type, every scenario that uses it skips with the plugin's own
// words (see startBackendPlugin).
func targetBackend() *backendKind {
	return &backendKind{
		name: "iscsitarget",
		tables: func(dir string) string {
			return fmt.Sprintf(`[backends.iscsitarget]
type = "iscsitarget"
portal = %q
iqn_prefix = "iqn.2024-01.test.vm.blockvol"
tgt_control_port = 0

[backends.iscsitarget.pools]
default = %q
`, targetPortal, filepath.Join(dir, "pool"))
		},
		setup: func(dir string) error { return mkdir(filepath.Join(dir, "pool")) },
		// Everything the backend attaches goes through sessions to
		// targetPortal: with nothing else mounted, any such disk is the
		// volume's. The scenarios release one volume at a time, and
		// twoVolumes checks the other one by its mount.
		attached: func(_ context.Context, v volume) []string {
			return targetDisks(v)
		},
		preformat:    preformatTarget,
		inUse:        targetInUse,
		released:     targetReleased,
		removed:      targetRemoved,
		afterAttach:  [3]string{"iscsiadm", "after", "--login"},
		beforeDetach: [3]string{"iscsiadm", "before", "--logout"},
	}
}

// targetDisks lists the disks of the sessions to targetPortal that belong
// to v: those of its IQN (and LUN) when Get shows them, else every one.
func targetDisks(v volume) []string {
	iqn, lun := volumeIQN(v)
	var out []string
	for _, s := range sessions(iqn) {
		if s.portal != targetPortal {
			continue
		}
		if len(s.luns) == 0 && lun < 0 {
			out = append(out, s.name+" (no disk)")
		}
		for l, d := range s.luns {
			if lun < 0 || l == lun {
				out = append(out, "/dev/"+d)
			}
		}
	}
	sort.Strings(out)
	return out
}

// volumeIQN returns the target IQN and LUN that Get shows for v; "" and
// -1 when it does not.
func volumeIQN(v volume) (string, int) {
	iqn, lun := "", -1
	for _, k := range []string{"iqn", "target", "target_iqn", "targetiqn"} {
		if x := v.status(k); strings.HasPrefix(x, "iqn.") {
			iqn = x
			break
		}
	}
	for _, k := range []string{"lun", "target_lun"} {
		if n, err := strconv.Atoi(v.status(k)); err == nil {
			lun = n
			break
		}
	}
	return iqn, lun
}

// backingFile returns the regular file behind v when Get shows one (the
// loop backend's "image", a target's LUN file): the first status value
// that is an absolute path to a regular file.
func backingFile(v volume) string {
	keys := make([]string, 0, len(v.Status))
	for k := range v.Status {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		p := v.status(k)
		if !filepath.IsAbs(p) || strings.HasPrefix(p, "/dev/") {
			continue
		}
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p
		}
	}
	return ""
}

// preformatFile puts fstype on a volume's backing file through a loop
// device.
func preformatFile(ctx context.Context, file, fstype string) error {
	out, err := run(ctx, "losetup", "--find", "--show", file)
	if err != nil {
		return err
	}
	dev := strings.TrimSpace(out)
	err = putFS(ctx, dev, fstype)
	return errors.Join(err, detachLoop(ctx, dev, file))
}

// detachLoop detaches a loop device and waits until it is really gone: a
// device still open elsewhere (udev probing after mkfs) is only marked
// for autoclear by `losetup --detach`, and would otherwise linger into the
// next step.
func detachLoop(ctx context.Context, dev, file string) error {
	if _, err := run(ctx, "losetup", "--detach", dev); err != nil {
		return err
	}
	return waitFor(ctx, 20*time.Second, 10*time.Millisecond, dev+" detached", func() (bool, error) {
		return len(loopsOf(file)) == 0, nil
	})
}

// preformatTarget puts fstype on an iscsitarget volume: through its
// backing file when Get shows one, else through a login of its own.
func preformatTarget(s *S, v volume, fstype string) error {
	if f := backingFile(v); f != "" {
		return preformatFile(s.ctx, f, fstype)
	}
	iqn, lun := volumeIQN(v)
	if iqn == "" || lun < 0 {
		return fmt.Errorf("Get of %s shows neither a backing file nor an IQN and LUN: %v", v.Name, v.Status)
	}
	ini, err := iscsi.New(iscsi.Config{}, hostexec.OS{}, nil)
	if err != nil {
		return err
	}
	t := iscsi.Target{IQN: iqn, Portals: []string{targetPortal}, LUN: lun}
	dev, err := ini.Attach(s.ctx, t)
	if err != nil {
		return err
	}
	return errors.Join(putFS(s.ctx, dev, fstype), ini.Detach(s.ctx, t))
}

// benchLogin measures Attach (node record, login, device) and Detach
// (logout) of one LUN, n times, with blockvol's iscsi package.
func benchLogin(s *S, n int) error {
	ctx := s.ctx
	dir := "/srv/" + s.name
	if err := s.Step("tgtd target with one LUN", func() error {
		if err := mkdir(dir); err != nil {
			return err
		}
		return newTarget(ctx, directCtl, 3, "iqn.2024-01.test.vm:bench", dir, 1)
	}); err != nil {
		return err
	}
	s.Cleanup(func() { deleteTarget(directCtl, 3) })
	ini, err := iscsi.New(iscsi.Config{}, hostexec.OS{}, initiatorLog(s))
	if err != nil {
		return err
	}
	t := iscsi.Target{IQN: "iqn.2024-01.test.vm:bench", Portals: []string{directPortal}, LUN: 1}
	for i := 0; i < n; i++ {
		if err := s.Step(fmt.Sprintf("Attach + Detach #%d", i+1), func() error {
			t0 := time.Now()
			if _, err := ini.Attach(ctx, t); err != nil {
				return err
			}
			t1 := time.Now()
			if err := ini.Detach(ctx, t); err != nil {
				return err
			}
			s.Time("login-to-device", t1.Sub(t0))
			s.Time("logout", time.Since(t1))
			return nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// tgtTarget is one target as `tgtadm --mode target --op show` prints it.
type tgtTarget struct {
	iqn        string
	initiators []string // logged in (I_T nexus)
	acl        []string
	files      []string // backing store paths
}

// tgtTargets lists the targets of the tgtd behind control port ctl.
func tgtTargets(ctx context.Context, ctl string) (map[string]*tgtTarget, error) {
	out, err := run(ctx, "tgtadm", "-C", ctl, "--lld", "iscsi", "--mode", "target", "--op", "show")
	if err != nil {
		return nil, err
	}
	ts := map[string]*tgtTarget{}
	var cur *tgtTarget
	inACL := false
	for _, line := range strings.Split(out, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "Target "):
			_, iqn, _ := strings.Cut(line, ": ")
			cur = &tgtTarget{iqn: strings.TrimSpace(iqn)}
			ts[cur.iqn] = cur
			inACL = false
		case cur == nil || trimmed == "":
		case strings.HasPrefix(line, "    ") && !strings.HasPrefix(line, "     "):
			inACL = trimmed == "ACL information:"
		case inACL:
			cur.acl = append(cur.acl, trimmed)
		case strings.HasPrefix(trimmed, "Initiator: "):
			f := strings.Fields(strings.TrimPrefix(trimmed, "Initiator: "))
			if len(f) > 0 {
				cur.initiators = append(cur.initiators, f[0])
			}
		case strings.HasPrefix(trimmed, "Backing store path: "):
			if p := strings.TrimPrefix(trimmed, "Backing store path: "); p != "None" {
				cur.files = append(cur.files, p)
			}
		}
	}
	return ts, nil
}

// guestInitiator is the guest's iSCSI initiator name.
const guestInitiator = "iqn.2024-01.test.vm:initiator"

// targetReleased checks the target side of a released volume: nobody
// logged in to its target, and this host off its ACL.
func targetReleased(s *S, v volume) error {
	iqn, _ := volumeIQN(v)
	ts, err := tgtTargets(s.ctx, "0")
	if err != nil {
		return err
	}
	t := ts[iqn]
	if t == nil {
		return nil // not exported: nothing to leak (the next attach exports it)
	}
	var errs []error
	if len(t.initiators) > 0 {
		errs = append(errs, fmt.Errorf("target %s still has initiators logged in: %v", iqn, t.initiators))
	}
	for _, a := range t.acl {
		if a == guestInitiator || a == "ALL" {
			errs = append(errs, fmt.Errorf("target %s still lets %s in (ACL %v)", iqn, a, t.acl))
		}
	}
	return errors.Join(errs...)
}

// targetInUse checks the target side of a mounted volume: exported, this
// host logged in and on the ACL, the volume's file behind it.
func targetInUse(s *S, v volume) error {
	iqn, _ := volumeIQN(v)
	ts, err := tgtTargets(s.ctx, "0")
	if err != nil {
		return err
	}
	t := ts[iqn]
	if t == nil {
		return fmt.Errorf("target %s of mounted volume %s is not exported (targets: %d)", iqn, v.Name, len(ts))
	}
	var errs []error
	if !slices.Contains(t.initiators, guestInitiator) {
		errs = append(errs, fmt.Errorf("target %s: this host is not logged in (initiators %v)", iqn, t.initiators))
	}
	if !slices.Contains(t.acl, guestInitiator) {
		errs = append(errs, fmt.Errorf("target %s: this host is not on the ACL %v", iqn, t.acl))
	}
	if f := v.status("file"); !slices.Contains(t.files, f) {
		errs = append(errs, fmt.Errorf("target %s exports %v, not the volume's file %s", iqn, t.files, f))
	}
	return errors.Join(errs...)
}

// targetRemoved checks that a removed volume left no target and no file.
func targetRemoved(s *S, v volume) error {
	iqn, _ := volumeIQN(v)
	ts, err := tgtTargets(s.ctx, "0")
	if err != nil {
		return err
	}
	var errs []error
	if t := ts[iqn]; t != nil {
		errs = append(errs, fmt.Errorf("target %s is still exported (files %v)", iqn, t.files))
	}
	if f := v.status("file"); f != "" {
		for _, p := range []string{f, strings.TrimSuffix(f, ".img") + ".json"} {
			if _, err := os.Stat(p); err == nil {
				errs = append(errs, fmt.Errorf("%s is still there", p))
			}
		}
	}
	return errors.Join(errs...)
}
