package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// backendKind is what the plugin scenarios need to know about a backend:
// how to configure it, how to see what it has attached on this host, how
// to put a filesystem on a volume behind the plugin's back, and where to
// kill the plugin in the middle of a mount or an unmount.
type backendKind struct {
	name string // the backend type, also its name in the configuration
	// tables returns the [backends.NAME] TOML of a scenario; setup, if
	// set, prepares the scenario's directory for it.
	tables func(dir string) string
	setup  func(dir string) error
	// attached lists the devices of v attached to this host.
	attached func(ctx context.Context, v volume) []string
	// preformat makes fstype on v's storage, with a file "marker", as if
	// the volume held data already ("swap" makes a swap signature).
	preformat func(s *S, v volume, fstype string) error
	// inUse and released, if set, check the backend's side of a volume
	// mounted and released by this host; removed checks that a removed
	// volume left nothing.
	inUse, released, removed func(s *S, v volume) error
	// afterAttach and beforeDetach are kill hooks (program, when, argument)
	// at the first point where the volume is attached but not yet
	// formatted or mounted, and at the point where it is unmounted but
	// not yet detached.
	afterAttach, beforeDetach [3]string
	// unavailable, when set, says why the running blockvol cannot serve
	// this backend (detected when a plugin fails to start with it).
	unavailable string
}

// backendScenarios are the plugin scenarios run for every backend.
func backendScenarios(b *backendKind) []scenario {
	n := func(s string) string { return b.name + "-" + s }
	return []scenario{
		{name: n("xfs-roundtrip"), run: func(s *S) error { return roundtrip(s, b, "xfs") }},
		{name: n("ext4-roundtrip"), run: func(s *S) error { return roundtrip(s, b, "ext4") }},
		{name: n("overwritefs"), run: func(s *S) error { return overwriteFS(s, b) }},
		{name: n("two-volumes"), run: func(s *S) error { return twoVolumes(s, b) }},
		{name: n("kill9-after-attach"), run: func(s *S) error { return killAfterAttach(s, b) }},
		{name: n("kill9-after-mkfs"), run: func(s *S) error { return killAfterMkfs(s, b) }},
		{name: n("kill9-before-detach"), run: func(s *S) error { return killBeforeDetach(s, b) }},
	}
}

// startBackendPlugin starts a plugin serving only backend b; it skips the
// scenario when this blockvol does not know b.
func startBackendPlugin(s *S, b *backendKind) (*plugin, error) {
	if b.unavailable != "" {
		return nil, skipf("%s", b.unavailable)
	}
	dir := filepath.Join("/srv", s.name)
	var p *plugin
	err := s.Step("start blockvol with the "+b.name+" backend", func() error {
		if b.setup != nil {
			if err := b.setup(dir); err != nil {
				return err
			}
		}
		var err error
		p, err = startPlugin(s, pluginConfig(dir, b.name, b.tables(dir)))
		if err != nil && p != nil {
			log := tail(p.logPath, 20)
			if strings.Contains(log, `"`+b.name+`"`) && (strings.Contains(log, "must be one of") || strings.Contains(log, "unknown type")) {
				b.unavailable = "this blockvol has no " + b.name + " backend yet: " + lastLine(log)
				return skipf("%s", b.unavailable)
			}
		}
		return err
	})
	return p, err
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}

// createVol creates a volume and removes it when the scenario ends.
// pluginWithVolume starts a plugin on backend b, creates vol with opts and
// returns the plugin and the volume as Get shows it.
func pluginWithVolume(s *S, b *backendKind, vol string, opts map[string]string) (*plugin, volume, error) {
	p, err := startBackendPlugin(s, b)
	if err != nil {
		return nil, volume{}, err
	}
	if err := createVol(s, p, vol, opts); err != nil {
		return nil, volume{}, err
	}
	v, err := p.get(vol)
	if err != nil {
		return nil, volume{}, err
	}
	return p, v, nil
}

func createVol(s *S, p *plugin, name string, opts map[string]string) error {
	desc := "Create " + name
	for _, k := range []string{"size", "fstype", "overwritefs"} {
		if v, ok := opts[k]; ok {
			desc += " " + k + "=" + v
		}
	}
	return s.Step(desc, func() error {
		t0 := time.Now()
		if err := p.create(name, opts); err != nil {
			return err
		}
		s.Time("create", time.Since(t0))
		s.Cleanup(func() {
			if p.running() {
				p.remove(name)
			}
		})
		return nil
	})
}

// checkMounted verifies a volume mounted at mp: the filesystem, the
// options, the record and the device.
func checkMounted(s *S, p *plugin, b *backendKind, vol, mp, fstype string, fresh bool) (volume, error) {
	m, ok := mountAt(mp)
	if !ok {
		return volume{}, fmt.Errorf("nothing mounted at %s", mp)
	}
	if m.fstype != fstype {
		return volume{}, fmt.Errorf("%s is %s, want %s", mp, m.fstype, fstype)
	}
	if !hasOpt(m.opts, "nosuid") || !hasOpt(m.opts, "nodev") {
		s.Errorf("%s mounted with %q, want nosuid,nodev", mp, m.opts)
	}
	if mp != filepath.Join(p.mountDir, vol) {
		s.Errorf("mountpoint %s, want %s", mp, filepath.Join(p.mountDir, vol))
	}
	if fresh {
		names, err := dirNames(mp)
		if err != nil {
			return volume{}, err
		}
		if len(names) > 0 {
			s.Errorf("fresh volume %s is not empty: %v", vol, names)
		}
	}
	v, err := p.get(vol)
	if err != nil {
		return v, err
	}
	if v.Mountpoint != mp || v.status("state") != "mounted" {
		s.Errorf("Get %s: Mountpoint %q state %q, want %q mounted", vol, v.Mountpoint, v.status("state"), mp)
	}
	if ph := p.recordPhase(vol); ph != "mounted" {
		s.Errorf("record of %s: phase %q, want mounted", vol, ph)
	}
	if b.inUse != nil {
		s.Check("backend side of mounted "+vol, b.inUse(s, v))
	}
	if devs := b.attached(s.ctx, v); len(devs) == 0 {
		s.Errorf("%s is mounted but the backend shows nothing attached", vol)
	} else {
		dev, _ := filepath.EvalSymlinks(v.status("device"))
		src, _ := filepath.EvalSymlinks(m.source)
		if dev == "" || src != dev {
			s.Errorf("mount source %s (%s) is not the volume's device %s (%s)", m.source, src, v.status("device"), dev)
		}
	}
	return v, nil
}

// checkReleased verifies that nothing of vol is left on this host: no
// mount, nothing attached, no record, Get says not mounted.
func checkReleased(s *S, p *plugin, b *backendKind, vol string) error {
	var errs []error
	mp := filepath.Join(p.mountDir, vol)
	if m, ok := mountAt(mp); ok {
		errs = append(errs, fmt.Errorf("still mounted: %s %s", m.source, mp))
	}
	if _, err := os.Stat(p.recordPath(vol)); err == nil {
		errs = append(errs, fmt.Errorf("record %s left (phase %q)", p.recordPath(vol), p.recordPhase(vol)))
	}
	v, err := p.get(vol)
	if err != nil {
		errs = append(errs, err)
	} else {
		if v.Mountpoint != "" {
			errs = append(errs, fmt.Errorf("Get says mounted at %s", v.Mountpoint))
		}
		if devs := b.attached(s.ctx, v); len(devs) > 0 {
			errs = append(errs, fmt.Errorf("still attached: %v", devs))
		}
		// Shared backends record the attachment with the volume too.
		for _, k := range []string{"attached_to", "sessions"} {
			if x := v.status(k); x != "" {
				errs = append(errs, fmt.Errorf("Get still shows %s %q", k, x))
			}
		}
		if b.released != nil {
			errs = append(errs, b.released(s, v))
		}
	}
	return errors.Join(errs...)
}

// mountStep mounts vol for id and checks the result.
func mountStep(s *S, p *plugin, b *backendKind, desc, vol, id, fstype string, fresh bool) (string, error) {
	var mp string
	err := s.Step(desc, func() error {
		t0 := time.Now()
		var err error
		mp, err = p.mount(vol, id)
		if err != nil {
			return err
		}
		if fresh {
			s.Time("mount-fresh", time.Since(t0))
		} else {
			s.Time("mount", time.Since(t0))
		}
		_, err = checkMounted(s, p, b, vol, mp, fstype, fresh)
		return err
	})
	return mp, err
}

// unmountStep unmounts the last user and checks that all is released.
func unmountStep(s *S, p *plugin, b *backendKind, vol, id string) error {
	return s.Step("Unmount "+vol+": unmounted, detached, no record", func() error {
		t0 := time.Now()
		if err := p.unmount(vol, id); err != nil {
			return err
		}
		s.Time("unmount", time.Since(t0))
		return checkReleased(s, p, b, vol)
	})
}

func roundtrip(s *S, b *backendKind, fstype string) error {
	p, err := startBackendPlugin(s, b)
	if err != nil {
		return err
	}
	vol := "rt-" + fstype
	id1, id2 := mountID(1), mountID(2)
	t0 := time.Now()
	if err := createVol(s, p, vol, map[string]string{"size": "512M", "fstype": fstype}); err != nil {
		return err
	}
	if err := s.Step("Get: "+fstype+", 512M, not mounted, nothing attached", func() error {
		v, err := p.get(vol)
		if err != nil {
			return err
		}
		if v.status("fstype") != fstype || v.Mountpoint != "" {
			return fmt.Errorf("Get = %+v", v)
		}
		if devs := b.attached(s.ctx, v); len(devs) > 0 {
			return fmt.Errorf("attached right after Create: %v", devs)
		}
		return nil
	}); err != nil {
		return err
	}
	mp, err := mountStep(s, p, b, "Mount "+vol+": attach, mkfs."+fstype+", mount", vol, id1, fstype, true)
	if err != nil {
		return err
	}
	s.Time("create+mount", time.Since(t0))
	var sum string
	if err := s.Step("write 4 MiB", func() error {
		sum, err = writeData(mp+"/data", 7)
		return err
	}); err != nil {
		return err
	}
	if err := s.Step("a second mount ID shares the mount; its Unmount leaves it mounted", func() error {
		mp2, err := p.mount(vol, id2)
		if err != nil {
			return err
		}
		if mp2 != mp {
			return fmt.Errorf("second Mount gave %s, want %s", mp2, mp)
		}
		if err := p.unmount(vol, id2); err != nil {
			return err
		}
		if _, ok := mountAt(mp); !ok {
			return errors.New("the first user's mount is gone")
		}
		return nil
	}); err != nil {
		return err
	}
	if err := unmountStep(s, p, b, vol, id1); err != nil {
		return err
	}
	mp, err = mountStep(s, p, b, "Mount "+vol+" again: attach, no mkfs, mount", vol, id1, fstype, false)
	if err != nil {
		return err
	}
	if err := s.Step("the data written before is read back", func() error {
		got, err := sumFile(mp + "/data")
		if err == nil && got != sum {
			err = fmt.Errorf("sha256 %s, want %s", got, sum)
		}
		return err
	}); err != nil {
		return err
	}
	if err := unmountStep(s, p, b, vol, id1); err != nil {
		return err
	}
	if err := s.Step("Remove "+vol+": Get fails, nothing left in the backend", func() error {
		v, err := p.get(vol)
		if err != nil {
			return err
		}
		if err := p.remove(vol); err != nil {
			return err
		}
		if _, err := p.get(vol); err == nil {
			return errors.New("Get still finds the volume")
		}
		if b.removed != nil {
			return b.removed(s, v)
		}
		return nil
	}); err != nil {
		return err
	}
	return s.Step("the plugin stops on SIGTERM", p.stop)
}

func overwriteFS(s *S, b *backendKind) error {
	p, err := startBackendPlugin(s, b)
	if err != nil {
		return err
	}
	id := mountID(1)
	pre := func(vol, fstype string) error {
		return s.Step("put "+fstype+" on "+vol+" behind the plugin's back", func() error {
			v, err := p.get(vol)
			if err != nil {
				return err
			}
			return b.preformat(s, v, fstype)
		})
	}

	// overwritefs=true: the existing ext4 is replaced by xfs, once.
	if err := createVol(s, p, "ow", map[string]string{"size": "512M", "fstype": "xfs", "overwritefs": "true"}); err != nil {
		return err
	}
	if err := pre("ow", "ext4"); err != nil {
		return err
	}
	mp, err := mountStep(s, p, b, "Mount ow: the ext4 is wiped, a fresh xfs made", "ow", id, "xfs", true)
	if err != nil {
		return err
	}
	var sum string
	if err := s.Step("write on ow", func() error {
		sum, err = writeData(mp+"/data", 3)
		return err
	}); err != nil {
		return err
	}
	if err := unmountStep(s, p, b, "ow", id); err != nil {
		return err
	}
	mp, err = mountStep(s, p, b, "Mount ow again: not wiped a second time", "ow", id, "xfs", false)
	if err != nil {
		return err
	}
	if err := s.Step("ow's data is still there", func() error {
		got, err := sumFile(mp + "/data")
		if err == nil && got != sum {
			err = fmt.Errorf("sha256 %s, want %s", got, sum)
		}
		return err
	}); err != nil {
		return err
	}
	if err := unmountStep(s, p, b, "ow", id); err != nil {
		return err
	}

	// Without overwritefs an existing filesystem is used as it is.
	if err := createVol(s, p, "keep", map[string]string{"size": "512M", "fstype": "xfs"}); err != nil {
		return err
	}
	if err := pre("keep", "ext4"); err != nil {
		return err
	}
	mp, err = mountStep(s, p, b, "Mount keep (fstype=xfs, holds ext4): the ext4 is kept", "keep", id, "ext4", false)
	if err != nil {
		return err
	}
	if err := s.Step("keep's marker file is there", func() error {
		_, err := os.Stat(mp + "/marker")
		return err
	}); err != nil {
		return err
	}
	if err := unmountStep(s, p, b, "keep", id); err != nil {
		return err
	}

	// A foreign signature is never overwritten, even with overwritefs.
	if err := createVol(s, p, "foreign", map[string]string{"size": "512M", "fstype": "ext4", "overwritefs": "true"}); err != nil {
		return err
	}
	if err := pre("foreign", "swap"); err != nil {
		return err
	}
	return s.Step("Mount foreign (swap, overwritefs=true) fails naming the swap; nothing left attached", func() error {
		_, err := p.mount("foreign", id)
		if err == nil {
			return errors.New("Mount succeeded on a swap device")
		}
		s.Note("Mount said: %v", err)
		if !strings.Contains(err.Error(), "swap") {
			s.Errorf("the error does not name the swap signature: %v", err)
		}
		if err := checkReleased(s, p, b, "foreign"); err != nil {
			return err
		}
		v, err := p.get("foreign")
		if err != nil {
			return err
		}
		return b.checkSignature(s, v, "swap")
	})
}

func twoVolumes(s *S, b *backendKind) error {
	p, err := startBackendPlugin(s, b)
	if err != nil {
		return err
	}
	id := mountID(1)
	for _, v := range []string{"one", "two"} {
		if err := createVol(s, p, v, map[string]string{"size": "512M", "fstype": "ext4"}); err != nil {
			return err
		}
	}
	mp1, err := mountStep(s, p, b, "Mount one", "one", id, "ext4", true)
	if err != nil {
		return err
	}
	mp2, err := mountStep(s, p, b, "Mount two", "two", id, "ext4", true)
	if err != nil {
		return err
	}
	var sum2 string
	if err := s.Step("write on both", func() error {
		if _, err := writeData(mp1+"/data", 1); err != nil {
			return err
		}
		sum2, err = writeData(mp2+"/data", 2)
		return err
	}); err != nil {
		return err
	}
	if err := unmountStep(s, p, b, "one", id); err != nil {
		return err
	}
	if err := s.Step("two stays mounted, attached and usable: read, write, drop caches, read", func() error {
		if _, err := checkMounted(s, p, b, "two", mp2, "ext4", false); err != nil {
			return err
		}
		got, err := sumFile(mp2 + "/data")
		if err == nil && got != sum2 {
			err = fmt.Errorf("sha256 %s, want %s", got, sum2)
		}
		if err != nil {
			return err
		}
		sum, err := writeData(mp2+"/more", 22)
		if err != nil {
			return err
		}
		if err := dropCaches(); err != nil {
			return err
		}
		if got, err := sumFile(mp2 + "/more"); err != nil || got != sum {
			return fmt.Errorf("read back %s, %v; want %s", got, err, sum)
		}
		return nil
	}); err != nil {
		return err
	}
	return unmountStep(s, p, b, "two", id)
}

// crashState checks what a kill left: the record in phase, the volume
// attached, mounted or not.
func crashState(s *S, p *plugin, b *backendKind, v volume, phase string, mounted bool) error {
	if err := p.waitExit(60 * time.Second); err != nil {
		return err
	}
	if !hookFired() {
		return errors.New("the kill hook never fired")
	}
	if ph := p.recordPhase(v.Name); ph != phase {
		return fmt.Errorf("record phase %q after the kill, want %q", ph, phase)
	}
	if devs := b.attached(s.ctx, v); len(devs) == 0 {
		return errors.New("nothing attached after the kill: the hook fired at the wrong point")
	} else {
		s.Note("left attached by the kill: %v", devs)
	}
	_, ok := mountAt(filepath.Join(p.mountDir, v.Name))
	if ok != mounted {
		return fmt.Errorf("mounted after the kill: %v, want %v", ok, mounted)
	}
	return nil
}

// restartStep restarts the killed plugin and checks that its recovery
// released the volume.
func restartStep(s *S, p *plugin, b *backendKind, vol string) error {
	return s.Step("restart blockvol: recovery releases "+vol+" (no mount, nothing attached, no record)", func() error {
		t0 := time.Now()
		if err := p.restart(); err != nil {
			return err
		}
		s.Time("restart+recover", time.Since(t0))
		return checkReleased(s, p, b, vol)
	})
}

func killAfterAttach(s *S, b *backendKind) error {
	const vol = "k1"
	id := mountID(1)
	p, v, err := pluginWithVolume(s, b, vol, map[string]string{"size": "512M", "fstype": "xfs"})
	if err != nil {
		return err
	}
	h := b.afterAttach
	if err := s.Step(fmt.Sprintf("Mount, kill -9 right after `%s %s` (%s)", h[0], h[2], h[1]), func() error {
		if err := armHook(h[0], h[1], h[2]); err != nil {
			return err
		}
		_, err := p.mount(vol, id)
		if err == nil {
			return errors.New("Mount succeeded: the plugin was not killed")
		}
		return crashState(s, p, b, v, "mounting", false)
	}); err != nil {
		return err
	}
	if err := restartStep(s, p, b, vol); err != nil {
		return err
	}
	mp, err := mountStep(s, p, b, "Mount "+vol+" after the restart: attach, mkfs, mount", vol, id, "xfs", true)
	if err != nil {
		return err
	}
	if err := s.Step("write", func() error { _, err := writeData(mp+"/data", 1); return err }); err != nil {
		return err
	}
	return unmountStep(s, p, b, vol, id)
}

func killAfterMkfs(s *S, b *backendKind) error {
	const vol = "k2"
	id := mountID(1)
	p, v, err := pluginWithVolume(s, b, vol, map[string]string{"size": "512M", "fstype": "ext4"})
	if err != nil {
		return err
	}
	var uuid string
	if err := s.Step("Mount, kill -9 right after mkfs.ext4 succeeds (formatted, not mounted)", func() error {
		if err := armHook("mkfs.ext4", "after", "-q"); err != nil {
			return err
		}
		if _, err := p.mount(vol, id); err == nil {
			return errors.New("Mount succeeded: the plugin was not killed")
		}
		if err := crashState(s, p, b, v, "mounting", false); err != nil {
			return err
		}
		devs := b.attached(s.ctx, v)
		out, err := run(s.ctx, "blkid", "-p", "-s", "UUID", "-o", "value", devs[0])
		uuid = strings.TrimSpace(out)
		return err
	}); err != nil {
		return err
	}
	if err := restartStep(s, p, b, vol); err != nil {
		return err
	}
	mp, err := mountStep(s, p, b, "Mount "+vol+" after the restart: the filesystem made before the kill is used", vol, id, "ext4", false)
	if err != nil {
		return err
	}
	if err := s.Step("same filesystem UUID, not formatted again", func() error {
		v, err := p.get(vol)
		if err != nil {
			return err
		}
		out, err := run(s.ctx, "blkid", "-p", "-s", "UUID", "-o", "value", v.status("device"))
		if err == nil && strings.TrimSpace(out) != uuid {
			err = fmt.Errorf("UUID %s, was %s before the kill", strings.TrimSpace(out), uuid)
		}
		return err
	}); err != nil {
		return err
	}
	if err := s.Step("write", func() error { _, err := writeData(mp+"/data", 1); return err }); err != nil {
		return err
	}
	return unmountStep(s, p, b, vol, id)
}

func killBeforeDetach(s *S, b *backendKind) error {
	p, err := startBackendPlugin(s, b)
	if err != nil {
		return err
	}
	const vol = "k3"
	id := mountID(1)
	if err := createVol(s, p, vol, map[string]string{"size": "512M", "fstype": "ext4"}); err != nil {
		return err
	}
	mp, err := mountStep(s, p, b, "Mount "+vol, vol, id, "ext4", true)
	if err != nil {
		return err
	}
	var sum string
	if err := s.Step("write", func() error { sum, err = writeData(mp+"/data", 5); return err }); err != nil {
		return err
	}
	v, err := p.get(vol)
	if err != nil {
		return err
	}
	h := b.beforeDetach
	if err := s.Step(fmt.Sprintf("Unmount, kill -9 right before `%s %s` (unmounted, still attached)", h[0], h[2]), func() error {
		if err := armHook(h[0], h[1], h[2]); err != nil {
			return err
		}
		if err := p.unmount(vol, id); err == nil {
			return errors.New("Unmount succeeded: the plugin was not killed")
		}
		return crashState(s, p, b, v, "unmounting", false)
	}); err != nil {
		return err
	}
	if err := restartStep(s, p, b, vol); err != nil {
		return err
	}
	mp, err = mountStep(s, p, b, "Mount "+vol+" after the restart", vol, id, "ext4", false)
	if err != nil {
		return err
	}
	if err := s.Step("the data written before the kill is read back", func() error {
		got, err := sumFile(mp + "/data")
		if err == nil && got != sum {
			err = fmt.Errorf("sha256 %s, want %s", got, sum)
		}
		return err
	}); err != nil {
		return err
	}
	return unmountStep(s, p, b, vol, id)
}

// benchCreateMount measures Create+Mount of fresh volumes.
func benchCreateMount(s *S, b *backendKind, n int) error {
	p, err := startBackendPlugin(s, b)
	if err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		vol := fmt.Sprintf("bench%d", i)
		id := mountID(i)
		if err := s.Step("Create+Mount+Unmount+Remove "+vol, func() error {
			t0 := time.Now()
			if err := p.create(vol, map[string]string{"size": "512M", "fstype": "ext4"}); err != nil {
				return err
			}
			t1 := time.Now()
			if _, err := p.mount(vol, id); err != nil {
				return err
			}
			t2 := time.Now()
			s.Time("create", t1.Sub(t0))
			s.Time("mount-fresh", t2.Sub(t1))
			s.Time("create+mount", t2.Sub(t0))
			if err := p.unmount(vol, id); err != nil {
				return err
			}
			s.Time("unmount", time.Since(t2))
			return p.remove(vol)
		}); err != nil {
			return err
		}
	}
	return nil
}

// loopBackend is the embedded loop backend.
func loopBackend() *backendKind {
	return &backendKind{
		name: "loop",
		tables: func(dir string) string {
			return fmt.Sprintf("[backends.loop]\ntype = \"loop\"\ndata_dir = %q\n", filepath.Join(dir, "loop"))
		},
		attached: func(_ context.Context, v volume) []string {
			return loopsOf(v.status("image"))
		},
		removed: func(s *S, v volume) error {
			img := v.status("image")
			var errs []error
			for _, p := range []string{img, strings.TrimSuffix(img, ".img") + ".json"} {
				if _, err := os.Stat(p); err == nil {
					errs = append(errs, fmt.Errorf("%s is still there", p))
				}
			}
			return errors.Join(errs...)
		},
		preformat: func(s *S, v volume, fstype string) error {
			img := v.status("image")
			if img == "" {
				return fmt.Errorf("Get of %s shows no image: %v", v.Name, v.Status)
			}
			return preformatFile(s.ctx, img, fstype)
		},
		afterAttach:  [3]string{"losetup", "after", "--find"},
		beforeDetach: [3]string{"losetup", "before", "--detach"},
	}
}

// putFS makes fstype on dev with a file named marker ("swap": mkswap).
func putFS(ctx context.Context, dev, fstype string) error {
	if fstype == "swap" {
		_, err := run(ctx, "mkswap", dev)
		return err
	}
	dir := "/mnt/preformat"
	if err := formatMount(ctx, dev, fstype, dir); err != nil {
		return err
	}
	err := os.WriteFile(dir+"/marker", []byte("made behind the plugin's back\n"), 0o644)
	syscall.Sync()
	return errors.Join(err, unmount(dir))
}

// checkSignature verifies that v's storage still holds fstype (a foreign
// signature the plugin must not touch), where Get shows a backing file.
func (b *backendKind) checkSignature(s *S, v volume, fstype string) error {
	f := backingFile(v)
	if f == "" {
		s.Note("no backing file in Get's status: the untouched %s is not checked", fstype)
		return nil
	}
	got, err := fsType(s.ctx, f)
	if err == nil && got != fstype {
		err = fmt.Errorf("%s holds %q now, want %q untouched", f, got, fstype)
	}
	return err
}
