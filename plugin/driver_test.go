package plugin

import (
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/volume"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/volumes"
)

const (
	id1 = "1111111111111111111111111111111111111111111111111111111111111111"
	id2 = "2222222222222222222222222222222222222222222222222222222222222222"
)

func (h *harness) create(name string, opts map[string]string) {
	h.t.Helper()
	if err := h.d.Create(&volume.CreateRequest{Name: name, Options: opts}); err != nil {
		h.t.Fatalf("Create %s: %v", name, err)
	}
}

func (h *harness) mount(name, id string) string {
	h.t.Helper()
	res, err := h.d.Mount(&volume.MountRequest{Name: name, ID: id})
	if err != nil {
		h.t.Fatalf("Mount %s id=%q: %v", name, id, err)
	}
	return res.Mountpoint
}

func (h *harness) unmount(name, id string) {
	h.t.Helper()
	if err := h.d.Unmount(&volume.UnmountRequest{Name: name, ID: id}); err != nil {
		h.t.Fatalf("Unmount %s id=%q: %v", name, id, err)
	}
}

func (h *harness) path(name string) string {
	h.t.Helper()
	res, err := h.d.Path(&volume.PathRequest{Name: name})
	if err != nil {
		h.t.Fatalf("Path %s: %v", name, err)
	}
	return res.Mountpoint
}

func count(calls []string, prefix string) int {
	n := 0
	for _, c := range calls {
		if strings.HasPrefix(c, prefix) {
			n++
		}
	}
	return n
}

func TestTwoContainersShareOneMount(t *testing.T) {
	h := newHarness(t)
	h.create("data", map[string]string{"size": "2", "fstype": "xfs"})
	mp1 := h.mount("data", id1)
	mp2 := h.mount("data", id2)
	if mp1 != "/mnt/bv/data" || mp2 != mp1 {
		t.Fatalf("mountpoints %q, %q; want both /mnt/bv/data", mp1, mp2)
	}
	if n := count(h.fs.callLog(), "mount "); n != 1 {
		t.Fatalf("filesystem mounted %d times for two containers, want once", n)
	}
	// The first container stops: the second must keep its volume.
	h.unmount("data", id1)
	if got := h.fs.mounted()["/mnt/bv/data"]; got == "" {
		t.Fatal("first Unmount pulled the volume from the second container")
	}
	if got := h.path("data"); got != mp1 {
		t.Fatalf("Path after first unmount = %q, want %q", got, mp1)
	}
	// A repeated Unmount of the same ID changes nothing.
	h.unmount("data", id1)
	if h.fs.mounted()["/mnt/bv/data"] == "" {
		t.Fatal("repeated Unmount of a released ID unmounted the volume")
	}
	h.unmount("data", id2)
	if len(h.fs.mounted()) != 0 {
		t.Fatalf("still mounted after the last Unmount: %v", h.fs.mounted())
	}
	if got := h.be.attached; len(got) != 0 {
		t.Fatalf("still attached after the last Unmount: %v", got)
	}
	if got := h.path("data"); got != "" {
		t.Fatalf("Path after last unmount = %q, want empty", got)
	}
	if want := []string{"prepare /dev/fake1 xfs overwrite=false", "mount /dev/fake1 /mnt/bv/data xfs []", "unmount /mnt/bv/data"}; !reflect.DeepEqual(h.fs.callLog(), want) {
		t.Fatalf("fs calls %q, want %q", h.fs.callLog(), want)
	}
}

func TestRepeatedMountWithSameIDIsOneUse(t *testing.T) {
	h := newHarness(t)
	h.create("v", nil)
	h.mount("v", id1)
	h.mount("v", id1)
	h.unmount("v", id1)
	if len(h.fs.mounted()) != 0 {
		t.Fatal("a repeated Mount with one ID needed two Unmounts")
	}
}

// Mesos runs `dvdcli mount` for every container on the agent but
// `dvdcli unmount` only once, when the last is gone.
func TestIDLessMountsAreIdempotent(t *testing.T) {
	h := newHarness(t)
	h.create("m", map[string]string{"size": "1"})
	h.mount("m", "")
	h.mount("m", "")
	h.unmount("m", "")
	if len(h.fs.mounted()) != 0 || len(h.be.attached) != 0 {
		t.Fatalf("one ID-less Unmount after two ID-less Mounts left %v mounted, %v attached", h.fs.mounted(), h.be.attached)
	}
}

func TestIDLessAndDockerUsersAreCountedApart(t *testing.T) {
	h := newHarness(t)
	h.create("mix", nil)
	h.mount("mix", "")
	h.mount("mix", id1)
	h.unmount("mix", "")
	if h.fs.mounted()["/mnt/bv/mix"] == "" {
		t.Fatal("ID-less Unmount pulled the volume from a Docker container")
	}
	// An ID-less Unmount with no ID-less use leaves Docker's users alone.
	h.unmount("mix", "")
	if h.fs.mounted()["/mnt/bv/mix"] == "" {
		t.Fatal("second ID-less Unmount pulled the volume from a Docker container")
	}
	h.unmount("mix", id1)
	if len(h.fs.mounted()) != 0 {
		t.Fatal("volume still mounted after every user left")
	}
}

func TestFailedMountUndoesItsWork(t *testing.T) {
	for _, tc := range []struct {
		name       string
		fail       func(h *harness)
		wantDetach bool
	}{
		{"attach fails", func(h *harness) { h.be.failNext("attach", errors.New("target unreachable")) }, true},
		{"prepare fails", func(h *harness) { h.fs.failNext("prepare", errors.New("device holds a dos partition table")) }, true},
		{"mount fails", func(h *harness) { h.fs.failNext("mount", errors.New("wrong fs type")) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.create("v", nil)
			tc.fail(h)
			_, err := h.d.Mount(&volume.MountRequest{Name: "v", ID: id1})
			if err == nil {
				t.Fatal("Mount succeeded")
			}
			if !strings.HasPrefix(err.Error(), `volume "v" cannot be mounted: `) {
				t.Fatalf("error %q does not say which volume could not be mounted", err)
			}
			if len(h.fs.mounted()) != 0 || len(h.be.attached) != 0 {
				t.Fatalf("failed Mount left %v mounted and %v attached", h.fs.mounted(), h.be.attached)
			}
			if h.hasRecord("v") {
				t.Fatal("failed Mount left a record")
			}
			if got := count(h.be.callLog(), "detach v"); got != 1 {
				t.Fatalf("detach called %d times, want 1", got)
			}
			// Nothing stuck: the next Mount works.
			if mp := h.mount("v", id1); mp != "/mnt/bv/v" {
				t.Fatalf("Mount after failure = %q", mp)
			}
		})
	}
}

func TestOverwriteFSWipesOnceAtFirstMount(t *testing.T) {
	h := newHarness(t)
	h.create("ow", map[string]string{"overwritefs": "true", "fstype": "xfs"})
	// The device already holds a filesystem (a re-used volume).
	h.fs.fsOn["/dev/fake1"] = "ext4"
	h.mount("ow", "")
	h.unmount("ow", "")
	h.mount("ow", "")
	h.unmount("ow", "")
	want := []string{
		"prepare /dev/fake1 xfs overwrite=true",
		"mount /dev/fake1 /mnt/bv/ow xfs []",
		"unmount /mnt/bv/ow",
		"prepare /dev/fake2 xfs overwrite=false",
		"mount /dev/fake2 /mnt/bv/ow xfs []",
		"unmount /mnt/bv/ow",
	}
	if got := h.fs.callLog(); !reflect.DeepEqual(got, want) {
		t.Fatalf("fs calls:\n got  %q\n want %q", got, want)
	}
	// The request is cleared before the wipe, never after.
	calls := h.be.callLog()
	if calls[1] != "attach ow" || calls[2] != "setmeta ow" {
		t.Fatalf("backend calls %q: want setmeta right after the first attach", calls)
	}
	if h.be.lastPreempt {
		t.Fatal("attach asked to preempt a volume created without preempt")
	}
}

func TestPreemptReachesAttach(t *testing.T) {
	h := newHarness(t)
	h.create("pre", map[string]string{"preempt": "true"})
	h.mount("pre", id1)
	if !h.be.lastPreempt {
		t.Fatal("a volume created with preempt=true was attached without preempting")
	}
}

func TestRemove(t *testing.T) {
	h := newHarness(t)
	h.create("r", nil)
	h.mount("r", id1)
	err := h.d.Remove(&volume.RemoveRequest{Name: "r"})
	if !errors.Is(err, sentinel.ErrInUse) || !strings.Contains(err.Error(), "in use by 1 mount") {
		t.Fatalf("Remove of a mounted volume: %v", err)
	}
	h.unmount("r", id1)
	if err := h.d.Remove(&volume.RemoveRequest{Name: "r"}); err != nil {
		t.Fatal(err)
	}
	_, err = h.d.Get(&volume.GetRequest{Name: "r"})
	if !errors.Is(err, sentinel.ErrNotFound) || err.Error() != `volume "r" does not exist` {
		t.Fatalf("Get after Remove: %v", err)
	}
	// A volume attached elsewhere (shared backend) is refused clearly.
	h.create("r2", nil)
	h.be.failNext("remove", errors.New("attached to host agent-7: volume in use"))
	err = h.d.Remove(&volume.RemoveRequest{Name: "r2"})
	if err == nil || !strings.Contains(err.Error(), "agent-7") {
		t.Fatalf("Remove refused by backend: %v", err)
	}
}

func TestCreate(t *testing.T) {
	h := newHarness(t)
	h.create("c", map[string]string{"Size": "512M", "NewFSType": "ext4", "mountopts": "noatime"})
	got, err := h.d.Get(&volume.GetRequest{Name: "c"})
	if err != nil {
		t.Fatal(err)
	}
	v := got.Volume
	if v.Name != "c" || v.Mountpoint != "" || v.CreatedAt != "2026-11-24T12:00:00Z" {
		t.Fatalf("Get = %+v", v)
	}
	if v.Status["size"] != "512 MiB" || v.Status["fstype"] != "ext4" || v.Status["backend"] != "local" {
		t.Fatalf("Status = %v", v.Status)
	}
	// Create of an existing name returns it, options unchanged.
	h.create("c", map[string]string{"size": "5"})
	if n := count(h.be.callLog(), "create"); n != 1 {
		t.Fatalf("backend create called %d times, want 1", n)
	}
	// Mount honours the stored options (dvdcli sends none at Mount).
	h.mount("c", "")
	if want := "mount /dev/fake1 /mnt/bv/c ext4 [noatime]"; h.fs.callLog()[1] != want {
		t.Fatalf("mount call %q, want %q", h.fs.callLog()[1], want)
	}
	res, err := h.d.Get(&volume.GetRequest{Name: "c"})
	if err != nil || res.Volume.Mountpoint != "/mnt/bv/c" || res.Volume.Status["mounts"] != 1 {
		t.Fatalf("Get of a mounted volume = %+v, %v", res.Volume, err)
	}
}

func TestBadInputCreatesNothing(t *testing.T) {
	cases := []struct {
		name string
		opts map[string]string
		want string
	}{
		{"a/b", nil, "not valid"},
		{"..", nil, "not valid"},
		{"x\x00y", nil, "not valid"},
		{strings.Repeat("n", 129), nil, "129 characters"},
		{"", nil, "empty"},
		{"ok", map[string]string{"colour": "blue"}, `unknown option "colour"`},
		{"ok", map[string]string{"size": "0"}, "option size"},
		{"ok", map[string]string{"size": "-1"}, "option size"},
		{"ok", map[string]string{"size": "1e99"}, "option size"},
		{"ok", map[string]string{"size": "99999999999999999999"}, "option size"},
		{"ok", map[string]string{"fstype": "btrfs"}, "option fstype"},
		{"ok", map[string]string{"size": "100M", "fstype": "xfs"}, "too small for xfs"},
		{"ok", map[string]string{"backend": "cinder"}, `option backend "cinder"`},
		{"ok", map[string]string{"mountopts": "suid"}, "option mountopts"},
		{"ok", map[string]string{"fstype": "xfs", "newfstype": "ext4"}, "give it once"},
	}
	for _, tc := range cases {
		h := newHarness(t)
		err := h.d.Create(&volume.CreateRequest{Name: tc.name, Options: tc.opts})
		if !errors.Is(err, sentinel.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Create(%q, %v) = %v; want ErrInvalid mentioning %q", tc.name, tc.opts, err, tc.want)
		}
		if calls := h.be.callLog(); len(calls) != 0 {
			t.Errorf("Create(%q, %v) reached the backend: %v", tc.name, tc.opts, calls)
		}
	}
}

func TestOperationsOnOneVolumeWaitOthersRunFree(t *testing.T) {
	h := newHarness(t)
	h.create("slow", nil)
	h.create("fast", nil)
	gate := make(chan struct{})
	h.be.attachGate["slow"] = gate
	entered := make(chan string, 2)
	h.be.attachEntered = entered

	first := make(chan error, 1)
	go func() {
		_, err := h.d.Mount(&volume.MountRequest{Name: "slow", ID: id1})
		first <- err
	}()
	if name := <-entered; name != "slow" {
		t.Fatalf("attach of %s, want slow", name)
	}
	// Started while the first holds the volume: must wait, not fail.
	second := make(chan error, 1)
	go func() {
		_, err := h.d.Mount(&volume.MountRequest{Name: "slow", ID: id2})
		second <- err
	}()
	// Another volume is not held up by the slow one.
	done := make(chan struct{})
	go func() { h.mount("fast", id1); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("a mount of another volume waited behind a slow attach")
	}
	select {
	case err := <-second:
		t.Fatalf("second Mount of the busy volume returned early: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(gate)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := <-second; err != nil {
		t.Fatalf("second Mount was refused instead of waiting: %v", err)
	}
	if res, err := h.d.Get(&volume.GetRequest{Name: "slow"}); err != nil || res.Volume.Status["mounts"] != 2 {
		t.Fatalf("Get = %+v, %v; want both users", res, err)
	}
}

func TestLockWaitEndsWithClearError(t *testing.T) {
	h := newHarness(t)
	h.d = h.newDriverWith(func(c *volumes.Config) { c.MountTimeout = 200 * time.Millisecond })
	h.create("stuck", nil)
	// Another operation holds the volume for longer than this Mount may wait.
	unlock, err := h.core.Lock(t.Context(), "stuck")
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	_, err = h.d.Mount(&volume.MountRequest{Name: "stuck", ID: id2})
	if !errors.Is(err, sentinel.ErrBusy) || !strings.Contains(err.Error(), "another operation on it did not finish in time") {
		t.Fatalf("Mount behind a stuck one = %v", err)
	}
	if calls := h.be.callLog(); count(calls, "attach") != 0 {
		t.Fatalf("a Mount that never got the volume reached the backend: %v", calls)
	}
}

func TestRestartKeepsMountsAndFinishesInterruptedWork(t *testing.T) {
	h := newHarness(t)
	h.create("live", nil)
	h.create("half", nil)
	h.create("gone", nil)
	h.mount("live", id1)
	h.mount("live", id2)
	h.mount("gone", id1)
	// A crash in the middle of mounting "half": claimed and attached,
	// never recorded as mounted.
	h.mount("half", id1)
	h.setPhase("half", "mounting")
	// "gone" lost its mount behind our back (a reboot, say).
	delete(h.fs.mounts, "/mnt/bv/gone")

	// kill -9, restart.
	h.d = h.newDriver()
	if err := h.core.Recover(t.Context()); err != nil {
		t.Fatal(err)
	}
	if h.fs.mounted()["/mnt/bv/live"] == "" {
		t.Fatal("restart unmounted a volume that containers still use")
	}
	if _, ok := h.fs.mounted()["/mnt/bv/half"]; ok {
		t.Fatal("half-done mount left mounted after recovery")
	}
	for _, n := range []string{"half", "gone"} {
		if _, ok := h.be.attached[n]; ok {
			t.Errorf("%s still attached after recovery", n)
		}
		if h.hasRecord(n) {
			t.Errorf("%s still has a record after recovery", n)
		}
	}
	// The running containers' Unmounts still work, counted as before.
	h.unmount("live", id1)
	if h.fs.mounted()["/mnt/bv/live"] == "" {
		t.Fatal("first Unmount after restart unmounted the volume from the second container")
	}
	h.unmount("live", id2)
	if len(h.fs.mounted()) != 0 || len(h.be.attached) != 0 {
		t.Fatalf("after restart and both Unmounts: mounted %v attached %v", h.fs.mounted(), h.be.attached)
	}
}

func TestFailedTeardownIsRetried(t *testing.T) {
	h := newHarness(t)
	h.create("b", nil)
	h.mount("b", id1)
	h.fs.failNext("unmount", errors.New("device busy"))
	err := h.d.Unmount(&volume.UnmountRequest{Name: "b", ID: id1})
	if err == nil || !strings.Contains(err.Error(), "device busy") {
		t.Fatalf("Unmount = %v, want the busy error", err)
	}
	// The next Mount reuses the still-mounted volume.
	if mp := h.mount("b", id2); mp != "/mnt/bv/b" {
		t.Fatalf("Mount = %q", mp)
	}
	if n := count(h.fs.callLog(), "prepare"); n != 1 {
		t.Fatalf("prepare ran %d times; a mounted filesystem must not be prepared again", n)
	}
	h.unmount("b", id2)
	if len(h.fs.mounted()) != 0 || len(h.be.attached) != 0 {
		t.Fatalf("mounted %v attached %v", h.fs.mounted(), h.be.attached)
	}
}

func TestGetDuringBackendOutage(t *testing.T) {
	h := newHarness(t)
	h.create("o", nil)
	h.create("idle", nil)
	h.mount("o", id1)
	h.be.getErr = errors.New("connection refused")
	res, err := h.d.Get(&volume.GetRequest{Name: "o"})
	if err != nil {
		t.Fatalf("Get of a mounted volume during an outage failed (Docker would forget it): %v", err)
	}
	if res.Volume.Mountpoint != "/mnt/bv/o" || !strings.Contains(res.Volume.Status["error"].(string), "connection refused") {
		t.Fatalf("Get = %+v", res.Volume)
	}
	// A volume seen before the outage (created here) is still answered,
	// with the outage in its Status: Docker keeps it.
	res, err = h.d.Get(&volume.GetRequest{Name: "idle"})
	if err != nil || res.Volume.Name != "idle" || !strings.Contains(res.Volume.Status["error"].(string), "connection refused") {
		t.Fatalf("Get of a known idle volume during an outage = %+v, %v", res, err)
	}
	// A volume never seen: the outage, never "not found".
	_, err = h.d.Get(&volume.GetRequest{Name: "unseen"})
	if err == nil || errors.Is(err, sentinel.ErrNotFound) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Get during an outage = %v; want the outage, never 'not found'", err)
	}
}

func TestListAndCapabilities(t *testing.T) {
	h := newHarness(t)
	h.create("b", nil)
	h.create("a", nil)
	h.mount("b", id1)
	res, err := h.d.List()
	if err != nil {
		t.Fatal(err)
	}
	want := []*volume.Volume{{Name: "a"}, {Name: "b", Mountpoint: "/mnt/bv/b"}}
	if !reflect.DeepEqual(res.Volumes, want) {
		t.Fatalf("List = %+v", res.Volumes)
	}
	if got := h.d.Capabilities().Capabilities.Scope; got != "local" {
		t.Fatalf("scope %q with a local backend", got)
	}
	h.be.scope = backends.ScopeGlobal
	if got := h.d.Capabilities().Capabilities.Scope; got != "global" {
		t.Fatalf("scope %q with a shared backend", got)
	}
}

type observed struct {
	op, backend string
	failed      bool
}

type recordingObserver struct {
	mu  sync.Mutex
	got []observed
}

func (o *recordingObserver) Observe(op, backend string, _ time.Duration, err error) {
	o.mu.Lock()
	o.got = append(o.got, observed{op, backend, err != nil})
	o.mu.Unlock()
}

func TestObserverAndStats(t *testing.T) {
	h := newHarness(t)
	obs := &recordingObserver{}
	h.d = h.newDriverWith(func(c *volumes.Config) { c.Observer = obs })
	h.create("s", nil)
	h.mount("s", id1)
	if a, m := h.core.Stats(); a != 1 || m != 1 {
		t.Fatalf("Stats = %d attached, %d mounted; want 1, 1", a, m)
	}
	h.unmount("s", id1)
	h.d.Create(&volume.CreateRequest{Name: "bad", Options: map[string]string{"size": "0"}})
	want := []observed{{"create", "local", false}, {"mount", "local", false}, {"unmount", "local", false}, {"create", "", true}}
	if !reflect.DeepEqual(obs.got, want) {
		t.Fatalf("observed %+v, want %+v", obs.got, want)
	}
	if a, m := h.core.Stats(); a != 0 || m != 0 {
		t.Fatalf("Stats after unmount = %d, %d", a, m)
	}
}

func TestCreateSurvivesAnotherBackendsOutage(t *testing.T) {
	h := newHarness(t)
	broken := newFakeBackend()
	broken.getErr = errors.New("connection refused")
	h.d = h.newDriverWith(func(c *volumes.Config) { c.Backends["remote"] = broken })
	if err := h.d.Create(&volume.CreateRequest{Name: "v"}); err != nil {
		t.Fatalf("Create on a working backend failed because another is down: %v", err)
	}
	err := h.d.Create(&volume.CreateRequest{Name: "w", Options: map[string]string{"backend": "remote"}})
	if err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Create on the unreachable backend = %v", err)
	}
}
