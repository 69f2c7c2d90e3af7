package cinder

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/iscsi"
)

// attachAPIs are the two attach sequences; the real Cinder offers both.
var attachAPIs = []string{AttachAttachments, AttachLegacy}

// TestCloudAttachDetach walks the whole state machine with the real
// services: available → attaching (while we log in) → in-use → (detaching)
// → available, with the target proven by iscsi-inq using the CHAP that
// Cinder returned, refused with a wrong password, and gone after detach.
func TestCloudAttachDetach(t *testing.T) {
	requireCloud(t)
	for _, api := range attachAPIs {
		t.Run(api, func(t *testing.T) {
			ini := &fakeInitiator{name: "iqn.2024-01.test:host-a", probe: true}
			b := newCloudBackend(t, adminConfig("host-a", api), ini)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			name := volName(t)
			mustRemove(t, b, name)
			vol, err := b.Create(ctx, backends.CreateRequest{Name: name, SizeBytes: 1 << 30, VolumeType: "file"})
			if err != nil {
				t.Fatal(err)
			}
			id := vol.Status["id"].(string)
			var seen []string
			var wrongPassword error
			ini.onAttach = func(ctx context.Context, tg iscsi.Target) error {
				st, err := volumeStatus(ctx, b, id)
				seen = append(seen, "login:"+st)
				if tg.CHAP == nil {
					return errors.New("Cinder's TgtAdm target came without CHAP")
				}
				bad := *tg.CHAP
				bad.Password += "x"
				_, wrongPassword = iscsiInq(ctx, ini.name, tg, &bad)
				return err
			}
			ini.onDetach = func(ctx context.Context, tg iscsi.Target) error {
				st, err := volumeStatus(ctx, b, id)
				seen = append(seen, "logout:"+st)
				return err
			}

			t0 := time.Now()
			dev, err := b.Attach(ctx, name, backends.AttachOptions{})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("attach took %s, device %s", time.Since(t0), dev)
			tg := ini.lastAttached()
			if !strings.Contains(dev, tg.IQN) || tg.Portals[0] != "127.0.0.1:3260" {
				t.Errorf("device %s, target %+v", dev, tg)
			}
			if wrongPassword == nil {
				t.Error("iscsi-inq with a wrong CHAP password was let in")
			}
			cv := cinderVolume(t, b, name)
			seen = append(seen, "attached:"+cv.Status)
			if len(cv.Attachments) != 1 || cv.Attachments[0].HostName != "host-a" {
				t.Errorf("attachments = %+v, want one on host-a", cv.Attachments)
			}
			if cv.Metadata[claimHostKey] != "host-a" || cv.Metadata[claimUUIDKey] != b.hostUUID {
				t.Errorf("claim metadata = %v", cv.Metadata)
			}
			if !strings.Contains(tgtTargets(t), tg.IQN) {
				t.Errorf("tgtd has no target %s", tg.IQN)
			}
			if got, err := b.Get(ctx, name); err != nil || got.Status["attached"] != "host-a" || got.Status["status"] != "in-use" {
				t.Errorf("Get = %+v, %v; want attached to host-a", got.Status, err)
			}

			// Attach again: the same target, looked up afresh.
			ini.onAttach = nil
			dev2, err := b.Attach(ctx, name, backends.AttachOptions{})
			if err != nil || dev2 != dev {
				t.Errorf("second Attach = %q, %v; want %q", dev2, err, dev)
			}
			if n := attachmentCount(t, b, cv); n != 1 {
				t.Errorf("%d attachments after a second Attach, want 1", n)
			}
			if err := b.Remove(ctx, name); !errors.Is(err, sentinel.ErrInUse) || !strings.Contains(err.Error(), "host-a") {
				t.Errorf("Remove of an attached volume = %v, want ErrInUse naming host-a", err)
			}

			t0 = time.Now()
			if err := b.Detach(ctx, name); err != nil {
				t.Fatal(err)
			}
			t.Logf("detach took %s", time.Since(t0))
			cv = cinderVolume(t, b, name)
			seen = append(seen, "detached:"+cv.Status)
			if len(cv.Attachments) != 0 || cv.Metadata[claimHostKey] != "" || cv.Metadata[claimUUIDKey] != "" {
				t.Errorf("after Detach: attachments %+v, metadata %v", cv.Attachments, cv.Metadata)
			}
			if strings.Contains(tgtTargets(t), tg.IQN) {
				t.Errorf("tgtd still exports %s after detach", tg.IQN)
			}
			if _, err := iscsiInq(ctx, ini.name, tg, tg.CHAP); err == nil {
				t.Errorf("target still reachable after detach")
			}
			if _, err := os.Stat(b.recordPath(id)); !os.IsNotExist(err) {
				t.Errorf("attachment record left behind: %v", err)
			}
			if err := b.Detach(ctx, name); err != nil {
				t.Errorf("second Detach = %v", err)
			}
			if _, det := ini.counts(); det != 1 {
				t.Errorf("%d logouts, want 1", det)
			}

			want := map[string]string{
				AttachAttachments: "login:attaching attached:in-use logout:in-use detached:available",
				AttachLegacy:      "login:attaching attached:in-use logout:detaching detached:available",
			}[api]
			if got := strings.Join(seen, " "); got != want {
				t.Errorf("states seen: %s\nwant:        %s", got, want)
			} else {
				t.Logf("states seen: %s", got)
			}
			if err := b.Remove(ctx, name); err != nil {
				t.Errorf("Remove after Detach = %v", err)
			}
		})
	}
}

// TestCloudAttachRollback: a login that fails after Cinder reserved the
// volume and made the export must leave it available, without
// attachment, claim or record — also when the caller's context is
// cancelled at that moment. So must a failure to finish the attach.
func TestCloudAttachRollback(t *testing.T) {
	requireCloud(t)
	for _, api := range attachAPIs {
		t.Run(api, func(t *testing.T) {
			ini := &fakeInitiator{name: "iqn.2024-01.test:host-a"}
			b := newCloudBackend(t, adminConfig("host-a", api), ini)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			name := volName(t)
			mustRemove(t, b, name)
			vol, err := b.Create(ctx, backends.CreateRequest{Name: name, SizeBytes: 1 << 30})
			if err != nil {
				t.Fatal(err)
			}
			id := vol.Status["id"].(string)
			check := func(t *testing.T, what string) {
				t.Helper()
				cv := cinderVolume(t, b, name)
				if cv.Status != "available" || len(cv.Attachments) != 0 || attachmentCount(t, b, cv) != 0 ||
					cv.Metadata[claimHostKey] != "" || cv.Metadata[claimUUIDKey] != "" {
					t.Errorf("after %s: status %s, attachments %+v (%d in all), metadata %v", what, cv.Status, cv.Attachments, attachmentCount(t, b, cv), cv.Metadata)
				}
				if _, err := os.Stat(b.recordPath(id)); !os.IsNotExist(err) {
					t.Errorf("after %s: attachment record left: %v", what, err)
				}
			}

			loginErr := errors.New("injected login failure")
			ini.onAttach = func(ctx context.Context, _ iscsi.Target) error {
				if st, _ := volumeStatus(ctx, b, id); st != "attaching" {
					t.Errorf("during login: status %s, want attaching", st)
				}
				return loginErr
			}
			if _, err := b.Attach(ctx, name, backends.AttachOptions{}); !errors.Is(err, loginErr) {
				t.Fatalf("Attach = %v, want the login failure", err)
			}
			if a, d := ini.counts(); a != 1 || d != 1 {
				t.Errorf("%d logins, %d logouts; want 1, 1 (a failed login is logged out)", a, d)
			}
			check(t, "a failed login")

			// The caller gives up during the login: the rollback runs anyway.
			cctx, ccancel := context.WithCancel(ctx)
			ini.onAttach = func(ctx context.Context, _ iscsi.Target) error {
				ccancel()
				return ctx.Err()
			}
			if _, err := b.Attach(cctx, name, backends.AttachOptions{}); !errors.Is(err, context.Canceled) {
				t.Fatalf("Attach = %v, want context.Canceled", err)
			}
			check(t, "a cancelled attach")

			// A record that cannot be written (the state directory is
			// gone) fails the attach before any login: rolled back too.
			ini.onAttach = nil
			saved := b.cfg.StateDir
			b.cfg.StateDir = filepath.Join(t.TempDir(), "missing")
			_, err = b.Attach(ctx, name, backends.AttachOptions{})
			b.cfg.StateDir = saved
			if err == nil || !strings.Contains(err.Error(), "attachment record") {
				t.Fatalf("Attach = %v, want a record failure", err)
			}
			check(t, "a failed record")

			// Afterwards the volume attaches and detaches normally.
			if _, err := b.Attach(ctx, name, backends.AttachOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := b.Detach(ctx, name); err != nil {
				t.Fatal(err)
			}
			check(t, "attach and detach")
		})
	}
}

// TestCloudDetachLogoutFails: a logout that fails leaves the volume
// attached (in-use, not detaching) so that Detach can be retried.
func TestCloudDetachLogoutFails(t *testing.T) {
	requireCloud(t)
	for _, api := range attachAPIs {
		t.Run(api, func(t *testing.T) {
			ini := &fakeInitiator{name: "iqn.2024-01.test:host-a"}
			b := newCloudBackend(t, adminConfig("host-a", api), ini)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			name := volName(t)
			mustRemove(t, b, name)
			if _, err := b.Create(ctx, backends.CreateRequest{Name: name, SizeBytes: 1 << 30}); err != nil {
				t.Fatal(err)
			}
			if _, err := b.Attach(ctx, name, backends.AttachOptions{}); err != nil {
				t.Fatal(err)
			}
			busyErr := errors.New("injected: device is mounted")
			ini.onDetach = func(context.Context, iscsi.Target) error { return busyErr }
			if err := b.Detach(ctx, name); !errors.Is(err, busyErr) {
				t.Fatalf("Detach = %v, want the logout failure", err)
			}
			if cv := cinderVolume(t, b, name); cv.Status != "in-use" || len(cv.Attachments) != 1 {
				t.Errorf("after a failed logout: %s with %d attachments, want in-use with 1", cv.Status, len(cv.Attachments))
			}
			ini.onDetach = nil
			if err := b.Detach(ctx, name); err != nil {
				t.Fatal(err)
			}
			if cv := cinderVolume(t, b, name); cv.Status != "available" {
				t.Errorf("after Detach: %s", cv.Status)
			}
		})
	}
}

// TestCloudPreempt: host B is refused a volume attached to host A (an
// error naming host-a), takes it over with Preempt, and host A's later
// Detach only logs out of its old target without touching B's attachment.
func TestCloudPreempt(t *testing.T) {
	requireCloud(t)
	for _, api := range attachAPIs {
		t.Run(api, func(t *testing.T) {
			iniA := &fakeInitiator{name: "iqn.2024-01.test:host-a", probe: true}
			iniB := &fakeInitiator{name: "iqn.2024-01.test:host-b", probe: true}
			a := newCloudBackend(t, adminConfig("host-a", api), iniA)
			b := newCloudBackend(t, adminConfig("host-b", api), iniB)
			if a.hostUUID == b.hostUUID {
				t.Fatal("the two hosts share a UUID")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			name := volName(t)
			mustRemove(t, a, name)
			if _, err := a.Create(ctx, backends.CreateRequest{Name: name, SizeBytes: 1 << 30}); err != nil {
				t.Fatal(err)
			}
			if _, err := a.Attach(ctx, name, backends.AttachOptions{}); err != nil {
				t.Fatal(err)
			}
			targetA := iniA.lastAttached()

			_, err := b.Attach(ctx, name, backends.AttachOptions{})
			if !errors.Is(err, sentinel.ErrInUse) || !strings.Contains(err.Error(), "host-a") {
				t.Fatalf("Attach on host B = %v, want ErrInUse naming host-a", err)
			}
			if cv := cinderVolume(t, a, name); cv.Status != "in-use" || cv.Metadata[claimUUIDKey] != a.hostUUID {
				t.Fatalf("refused attach changed the volume: %s %v", cv.Status, cv.Metadata)
			}

			t0 := time.Now()
			if _, err := b.Attach(ctx, name, backends.AttachOptions{Preempt: true}); err != nil {
				t.Fatal(err)
			}
			t.Logf("takeover took %s", time.Since(t0))
			if tb := iniB.lastAttached(); tb.CHAP != nil && targetA.CHAP != nil && *tb.CHAP == *targetA.CHAP {
				// Cinder's TgtAdm keeps a volume's CHAP account across
				// exports: fencing host A rests on Cinder removing its
				// export (its sessions end) and on A being down.
				t.Logf("note: host B got the same CHAP account as host A")
			}
			cv := cinderVolume(t, b, name)
			if cv.Status != "in-use" || len(cv.Attachments) != 1 || cv.Attachments[0].HostName != "host-b" || cv.Metadata[claimUUIDKey] != b.hostUUID {
				t.Errorf("after takeover: %s, %+v, %v", cv.Status, cv.Attachments, cv.Metadata)
			}
			if got, _ := b.Get(ctx, name); got.Status["attached"] != "host-b" {
				t.Errorf("Get shows attached = %v, want host-b", got.Status["attached"])
			}

			// Host A's attach is now refused (not silently taken back).
			if _, err := a.Attach(ctx, name, backends.AttachOptions{}); !errors.Is(err, sentinel.ErrInUse) || !strings.Contains(err.Error(), "host-b") {
				t.Errorf("Attach on host A after takeover = %v, want ErrInUse naming host-b", err)
			}
			// Host A's Detach logs out of its old target and leaves B alone;
			// in the legacy case only after B is done and the volume is
			// gone from Cinder altogether.
			if api == AttachLegacy {
				if err := b.Detach(ctx, name); err != nil {
					t.Fatal(err)
				}
				if err := b.Remove(ctx, name); err != nil {
					t.Fatal(err)
				}
			}
			if err := a.Detach(ctx, name); err != nil {
				t.Fatal(err)
			}
			if _, d := iniA.counts(); d != 1 || iniA.detached[0].IQN != targetA.IQN {
				t.Errorf("host A logouts = %+v, want one of %s", iniA.detached, targetA.IQN)
			}
			if recs, err := a.recordsNamed(name); err != nil || len(recs) != 0 {
				t.Errorf("host A still has records %v, %v", recs, err)
			}
			if api == AttachLegacy {
				return
			}
			if cv := cinderVolume(t, b, name); cv.Status != "in-use" || cv.Metadata[claimUUIDKey] != b.hostUUID {
				t.Errorf("host A's Detach disturbed host B: %s %v", cv.Status, cv.Metadata)
			}
			if err := b.Detach(ctx, name); err != nil {
				t.Fatal(err)
			}
			if err := b.Remove(ctx, name); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestCloudPreemptNeedsAdmin: a member-only user cannot force-detach; the
// error says so, and the volume stays with its host.
func TestCloudPreemptNeedsAdmin(t *testing.T) {
	requireCloud(t)
	a := newCloudBackend(t, demoConfig("host-a", AttachAuto), &fakeInitiator{name: "iqn.2024-01.test:host-a"})
	cfgB := demoConfig("host-b", AttachAuto)
	cfgB.Preempt = true // from the configuration this time
	b := newCloudBackend(t, cfgB, &fakeInitiator{name: "iqn.2024-01.test:host-b"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	name := volName(t)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := a.Detach(ctx, name); err != nil {
			t.Error(err)
		}
		if err := a.Remove(ctx, name); err != nil && !errors.Is(err, sentinel.ErrNotFound) {
			t.Error(err)
		}
	})
	if _, err := a.Create(ctx, backends.CreateRequest{Name: name, SizeBytes: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Attach(ctx, name, backends.AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	cv := cinderVolume(t, a, name)
	if len(cv.Attachments) != 1 || cv.Attachments[0].HostName != "" {
		t.Logf("note: Cinder shows the attachment's host to this member user: %+v", cv.Attachments)
	}
	_, err := b.Attach(ctx, name, backends.AttachOptions{})
	if !errors.Is(err, sentinel.ErrInUse) || !strings.Contains(err.Error(), "admin role") || !strings.Contains(err.Error(), "403") || !strings.Contains(err.Error(), "host-a") {
		t.Fatalf("preempting Attach by a member = %v, want ErrInUse saying the admin role is needed", err)
	}
	t.Log(err)
	if cv := cinderVolume(t, a, name); cv.Status != "in-use" || cv.Metadata[claimUUIDKey] != a.hostUUID {
		t.Errorf("volume after the refused takeover: %s %v", cv.Status, cv.Metadata)
	}
}

// TestCloudRecoverInterrupted: a crash of this host between reserving a
// volume and finishing the attach leaves it attaching with our claim; the
// next Attach undoes that and attaches.
func TestCloudRecoverInterrupted(t *testing.T) {
	requireCloud(t)
	for _, api := range attachAPIs {
		t.Run(api, func(t *testing.T) {
			ini := &fakeInitiator{name: "iqn.2024-01.test:host-a"}
			cfg := adminConfig("host-a", api)
			cfg.StateDir = t.TempDir()
			cfg.HostUUIDFile = filepath.Join(cfg.StateDir, "host-uuid")
			b := newCloudBackend(t, cfg, ini)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			name := volName(t)
			mustRemove(t, b, name)
			if _, err := b.Create(ctx, backends.CreateRequest{Name: name, SizeBytes: 1 << 30}); err != nil {
				t.Fatal(err)
			}
			// "Crash" in the middle of the login: the hook never returns
			// to the backend (the goroutine is left blocked), like a
			// process killed at that point.
			crashed := make(chan struct{})
			var once sync.Once
			ini.onAttach = func(context.Context, iscsi.Target) error {
				once.Do(func() { close(crashed) })
				select {} // never returns
			}
			failed := make(chan error, 1)
			go func() { _, err := b.Attach(ctx, name, backends.AttachOptions{}); failed <- err }()
			select {
			case <-crashed:
			case err := <-failed:
				t.Fatalf("Attach ended before the login: %v", err)
			}
			if cv := cinderVolume(t, b, name); cv.Status != "attaching" || cv.Metadata[claimUUIDKey] != b.hostUUID {
				t.Fatalf("mid-attach: %s %v", cv.Status, cv.Metadata)
			}
			// The restarted plugin: a new Backend with the same state.
			ini2 := &fakeInitiator{name: ini.name}
			b2 := newCloudBackend(t, cfg, ini2)
			if _, err := b2.Attach(ctx, name, backends.AttachOptions{}); err != nil {
				t.Fatal(err)
			}
			if cv := cinderVolume(t, b2, name); cv.Status != "in-use" || attachmentCount(t, b2, cv) != 1 {
				t.Errorf("after recovery: %s with %d attachments", cv.Status, attachmentCount(t, b2, cv))
			}
			if _, d := ini2.counts(); d != 1 {
				t.Errorf("%d logouts of the interrupted login, want 1", d)
			}
			if err := b2.Detach(ctx, name); err != nil {
				t.Fatal(err)
			}
			if cv := cinderVolume(t, b2, name); cv.Status != "available" {
				t.Errorf("after Detach: %s", cv.Status)
			}
		})
	}
}
