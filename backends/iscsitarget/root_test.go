package iscsitarget

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/backends/iscsitarget/internal/testsrv"
	"github.com/blockvol/blockvol/backends/iscsitarget/sshhost"
	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/internal/testenv"
	"github.com/blockvol/blockvol/iscsi"
)

// Root tests: a real tgtd on 127.0.0.1 (started by the test), the
// backend's files in a temporary pool, and libiscsi's tools playing the
// initiators — the kernel here has no iSCSI initiator, so the backend's
// Initiator is a fake that logs in with iscsi-inq under the host's
// initiator name, as the kernel would.

const (
	realPrefix = "iqn.2024-01.org.blockvol.test"
	initA      = "iqn.2024-01.org.blockvol.test.host:a"
	initB      = "iqn.2024-01.org.blockvol.test.host:b"
	mib        = 1 << 20
)

type realEnv struct {
	t    *testing.T
	tgtd *testsrv.TGTD
	pool string
}

func newRealEnv(t *testing.T) *realEnv {
	t.Helper()
	tgtd := testsrv.StartTGTD(t)
	testenv.RequireTools(t, "iscsi-readcapacity16", "iscsi-inq", "flock", "timeout", "truncate")
	return &realEnv{t: t, tgtd: tgtd, pool: t.TempDir()}
}

// agent is one blockvol agent: a backend and its initiator.
type agent struct {
	b   *Backend
	ini *fakeInitiator
}

// agent returns the backend of host name (initiator initiator) on this
// tgtd. Its initiator logs in for real (iscsi-inq) unless probe is false.
func (r *realEnv) agent(host Host, name, initiator string, probe bool, mod func(*Config)) agent {
	r.t.Helper()
	cfg := Config{
		Portal:         r.tgtd.Portal,
		IQNPrefix:      realPrefix,
		Pools:          map[string]string{"default": r.pool},
		DefaultPool:    "default",
		TGTControlPort: r.tgtd.ControlPort,
		HostName:       name,
	}
	if mod != nil {
		mod(&cfg)
	}
	if host == nil {
		host = LocalHost{hostexec.OS{}}
	}
	ini := &fakeInitiator{name: initiator}
	ini.attach = func(ctx context.Context, t iscsi.Target) (string, error) {
		if probe {
			if out, err := exec.CommandContext(ctx, "iscsi-inq", "-i", initiator, lunURL(t.Portals[0], t.IQN, t.CHAP)).CombinedOutput(); err != nil {
				return "", fmt.Errorf("login of %s to %s refused: %v: %s", initiator, t.IQN, err, strings.TrimSpace(string(out)))
			}
		}
		return "/dev/fake/" + t.IQN, nil
	}
	b, err := New(cfg, host, ini, testLogger(r.t))
	if err != nil {
		r.t.Fatal(err)
	}
	return agent{b, ini}
}

func lunURL(portal, iqn string, chap *iscsi.CHAP) string {
	auth := ""
	if chap != nil {
		auth = chap.Username + "%" + chap.Password + "@"
	}
	return "iscsi://" + auth + portal + "/" + iqn + "/1"
}

// capacity is what iscsi-readcapacity16 logged in as initiator reports of
// the LUN, or the refusal.
func (r *realEnv) capacity(initiator, iqn string, chap *iscsi.CHAP) (int64, error) {
	out, err := exec.Command("iscsi-readcapacity16", "-i", initiator, lunURL(r.tgtd.Portal, iqn, chap)).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Total size:"); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("no size in %q", out)
}

// wantCapacity asserts that initiator sees the LUN with size bytes.
func (r *realEnv) wantCapacity(initiator, iqn string, size int64) {
	r.t.Helper()
	got, err := r.capacity(initiator, iqn, nil)
	if err != nil || got != size {
		r.t.Fatalf("%s reads the capacity of %s: %d, %v; want %d", initiator, iqn, got, err, size)
	}
}

// wantRefused asserts that the target does not let initiator in.
func (r *realEnv) wantRefused(initiator, iqn string) {
	r.t.Helper()
	if _, err := r.capacity(initiator, iqn, nil); err == nil || !strings.Contains(err.Error(), "Login Failed") {
		r.t.Fatalf("%s logged in to %s: %v", initiator, iqn, err)
	}
}

// targets is what tgtd exports now.
func (r *realEnv) targets() map[string]*export {
	r.t.Helper()
	out, err := r.tgtd.Tgtadm("--mode", "target", "--op", "show")
	if err != nil {
		r.t.Fatalf("tgtadm: %v %s", err, out)
	}
	m, err := parseTgtShow(out)
	if err != nil {
		r.t.Fatal(err)
	}
	return m
}

// wantIdentity asserts that tgtd shows LUN 1 of target iqn with the
// volume's own SCSI ID and serial (lunIdentity), not tgt's default.
func (r *realEnv) wantIdentity(iqn string) {
	r.t.Helper()
	out, err := r.tgtd.Tgtadm("--mode", "target", "--op", "show")
	if err != nil {
		r.t.Fatalf("tgtadm: %v %s", err, out)
	}
	_, block, _ := strings.Cut(out, ": "+iqn+"\n")
	block, _, _ = strings.Cut(block, "\nTarget ")
	id := lunIdentity(iqn)
	if !strings.Contains(block, "SCSI ID: "+id) || !strings.Contains(block, "SCSI SN: "+id) {
		r.t.Fatalf("target %s: want LUN 1 with SCSI ID and SN %s; tgtd shows:\n%s", iqn, id, block)
	}
}

func (r *realEnv) acl(iqn string) []string {
	r.t.Helper()
	e := r.targets()[iqn]
	if e == nil {
		r.t.Fatalf("target %s is not exported", iqn)
	}
	return e.acl
}

func TestRealCreateAttachDetachRemove(t *testing.T) {
	r := newRealEnv(t)
	a := r.agent(nil, "node-a", initA, true, nil)
	v, err := a.b.Create(ctx, backends.CreateRequest{Name: "v1", SizeBytes: 64 * mib, Meta: map[string]string{"fstype": "xfs"}})
	if err != nil {
		t.Fatal(err)
	}
	iqn := realPrefix + ":v1"
	img := filepath.Join(r.pool, "v1.img")
	var st syscall.Stat_t
	if err := syscall.Stat(img, &st); err != nil || st.Size != 64*mib || st.Blocks*512 >= 64*mib || st.Mode&0o777 != 0o600 {
		t.Fatalf("backing file: %+v, %v; want a sparse 64 MiB file, mode 0600", st, err)
	}
	if v.Status["target"] != iqn || v.Status["export"] != "ok" {
		t.Fatalf("created %+v", v)
	}
	// Exported, but nobody is allowed before an attach.
	if e := r.targets()[iqn]; e == nil || e.file != img || len(e.acl) != 0 {
		t.Fatalf("export after create: %+v", e)
	}
	r.wantRefused(initA, iqn)

	dev, err := a.b.Attach(ctx, "v1", backends.AttachOptions{})
	if err != nil || dev != "/dev/fake/"+iqn {
		t.Fatalf("Attach = %q, %v", dev, err)
	}
	r.wantCapacity(initA, iqn, 64*mib)
	r.wantRefused(initB, iqn)
	got, err := a.b.Get(ctx, "v1")
	if err != nil || got.Status["attached_to"] != "node-a (initiator "+initA+")" || got.Meta["fstype"] != "xfs" {
		t.Fatalf("Get = %+v, %v", got, err)
	}
	if err := a.b.Remove(ctx, "v1"); !errors.Is(err, sentinel.ErrInUse) || !strings.Contains(err.Error(), "node-a") {
		t.Fatalf("Remove of an attached volume = %v", err)
	}

	if err := a.b.Detach(ctx, "v1"); err != nil {
		t.Fatal(err)
	}
	r.wantRefused(initA, iqn)
	if err := a.b.Detach(ctx, "v1"); err != nil {
		t.Fatalf("second Detach = %v", err)
	}
	if err := a.b.Remove(ctx, "v1"); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.targets()[iqn]; ok {
		t.Fatal("target still exported after Remove")
	}
	for _, f := range []string{img, filepath.Join(r.pool, "v1.json")} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Fatalf("%s still there after Remove: %v", f, err)
		}
	}
	if _, err := a.b.Get(ctx, "v1"); !errors.Is(err, sentinel.ErrNotFound) {
		t.Fatalf("Get after Remove = %v", err)
	}
}

// startSession keeps a session of initiator with the LUN open (iscsi-perf
// reading it, never reconnecting) until it is cut; it returns a channel
// closed when the session's program has exited.
func (r *realEnv) startSession(initiator, iqn string) <-chan struct{} {
	r.t.Helper()
	testenv.RequireTools(r.t, "iscsi-perf")
	logf, err := os.Create(filepath.Join(r.t.TempDir(), "iscsi-perf.log"))
	if err != nil {
		r.t.Fatal(err)
	}
	cmd := exec.Command("iscsi-perf", "-i", initiator, "-m", "1", "-b", "1", "-x", "0", lunURL(r.tgtd.Portal, iqn, nil))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(exited) }()
	r.t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	deadline := time.Now().Add(5 * time.Second)
	for {
		if e := r.targets()[iqn]; e != nil && slices.Contains(e.connected(), initiator) {
			return exited
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("no session of %s on %s after 5s", initiator, iqn)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRealSecondHostIsRefusedThenPreempts(t *testing.T) {
	r := newRealEnv(t)
	a := r.agent(nil, "node-a", initA, true, nil)
	b := r.agent(nil, "node-b", initB, true, nil)
	iqn := realPrefix + ":shared"
	if _, err := a.b.Create(ctx, backends.CreateRequest{Name: "shared", SizeBytes: 8 * mib}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.b.Get(ctx, "shared"); err != nil {
		t.Fatalf("the other host does not see the volume: %v", err)
	}
	if _, err := a.b.Attach(ctx, "shared", backends.AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	inUse := r.startSession(initA, iqn) // node-a writes to the volume

	_, err := b.b.Attach(ctx, "shared", backends.AttachOptions{})
	if !errors.Is(err, sentinel.ErrInUse) || !strings.Contains(err.Error(), "host node-a (initiator "+initA+") has it attached since") {
		t.Fatalf("Attach on node-b = %v; want ErrInUse naming node-a", err)
	}
	t.Logf("refusal as users see it: %v", err)
	if err := b.b.Remove(ctx, "shared"); !errors.Is(err, sentinel.ErrInUse) || !strings.Contains(err.Error(), "node-a") {
		t.Fatalf("Remove on node-b = %v", err)
	}
	if acl := r.acl(iqn); !reflect.DeepEqual(acl, []string{initA}) {
		t.Fatalf("ACL after the refusal: %v", acl)
	}

	// node-a is dead, say: node-b takes the volume over.
	if _, err := b.b.Attach(ctx, "shared", backends.AttachOptions{Preempt: true}); err != nil {
		t.Fatal(err)
	}
	if acl := r.acl(iqn); !reflect.DeepEqual(acl, []string{initB}) {
		t.Fatalf("ACL after preempt: %v, want only %s", acl, initB)
	}
	select {
	case <-inUse:
	case <-time.After(10 * time.Second):
		t.Fatal("node-a's session survived the preempt")
	}
	if in := r.targets()[iqn].connected(); slices.Contains(in, initA) {
		t.Fatalf("node-a still connected: %v", in)
	}
	r.wantRefused(initA, iqn)
	r.wantCapacity(initB, iqn, 8*mib)
	v, _ := b.b.Get(ctx, "shared")
	if v.Status["attached_to"] != "node-b (initiator "+initB+")" {
		t.Fatalf("attached_to %v", v.Status["attached_to"])
	}

	// node-a comes back and cleans up: it must not touch node-b's grant.
	if err := a.b.Detach(ctx, "shared"); err != nil {
		t.Fatal(err)
	}
	r.wantCapacity(initB, iqn, 8*mib)
	if _, err := a.b.Attach(ctx, "shared", backends.AttachOptions{}); !errors.Is(err, sentinel.ErrInUse) || !strings.Contains(err.Error(), "node-b") {
		t.Fatalf("node-a attaching again = %v", err)
	}
	if err := b.b.Detach(ctx, "shared"); err != nil {
		t.Fatal(err)
	}
	if err := a.b.Remove(ctx, "shared"); err != nil {
		t.Fatal(err)
	}
}

func TestRealAttachRaceHasOneWinner(t *testing.T) {
	r := newRealEnv(t)
	agents := []agent{
		r.agent(nil, "node-a", initA, false, nil),
		r.agent(nil, "node-b", initB, false, nil),
	}
	iqn := realPrefix + ":race"
	if _, err := agents[0].b.Create(ctx, backends.CreateRequest{Name: "race", SizeBytes: mib}); err != nil {
		t.Fatal(err)
	}
	const rounds = 25
	wins := [2]int{}
	for round := range rounds {
		var wg sync.WaitGroup
		errs := make([]error, 2)
		start := make(chan struct{})
		for i, ag := range agents {
			wg.Go(func() {
				<-start
				_, errs[i] = ag.b.Attach(ctx, "race", backends.AttachOptions{})
			})
		}
		close(start)
		wg.Wait()
		if (errs[0] == nil) == (errs[1] == nil) {
			t.Fatalf("round %d: attach results %v and %v; want exactly one winner", round, errs[0], errs[1])
		}
		w, l := 0, 1
		if errs[0] != nil {
			w, l = 1, 0
		}
		wins[w]++
		winner := agents[w].b.hostName
		if !errors.Is(errs[l], sentinel.ErrInUse) || !strings.Contains(errs[l].Error(), "host "+winner+" (initiator "+agents[w].ini.name+")") {
			t.Fatalf("round %d: the loser's error %v does not name %s", round, errs[l], winner)
		}
		if acl := r.acl(iqn); !reflect.DeepEqual(acl, []string{agents[w].ini.name}) {
			t.Fatalf("round %d: ACL %v; want only the winner %s", round, acl, agents[w].ini.name)
		}
		if err := agents[w].b.Detach(ctx, "race"); err != nil {
			t.Fatal(err)
		}
		if acl := r.acl(iqn); len(acl) != 0 {
			t.Fatalf("round %d: ACL after detach: %v", round, acl)
		}
	}
	t.Logf("%d rounds: node-a won %d, node-b won %d", rounds, wins[0], wins[1])
}

func TestRealCreateRaceHasOneWinner(t *testing.T) {
	r := newRealEnv(t)
	agents := []agent{
		r.agent(nil, "node-a", initA, false, nil),
		r.agent(nil, "node-b", initB, false, nil),
	}
	for round := range 10 {
		name := fmt.Sprintf("c%d", round)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		start := make(chan struct{})
		for i, ag := range agents {
			wg.Go(func() {
				<-start
				_, errs[i] = ag.b.Create(ctx, backends.CreateRequest{Name: name, SizeBytes: mib, Meta: map[string]string{"by": ag.b.hostName}})
			})
		}
		close(start)
		wg.Wait()
		if (errs[0] == nil) == (errs[1] == nil) {
			t.Fatalf("round %d: create results %v and %v; want exactly one winner", round, errs[0], errs[1])
		}
		l := 0
		if errs[1] != nil {
			l = 1
		}
		if !errors.Is(errs[l], sentinel.ErrExists) {
			t.Fatalf("round %d: loser's error %v; want ErrExists", round, errs[l])
		}
		v, err := agents[l].b.Get(ctx, name)
		if err != nil || v.Meta["by"] != agents[1-l].b.hostName {
			t.Fatalf("round %d: the loser sees %+v, %v; want the winner's volume", round, v, err)
		}
	}
	vols, err := agents[0].b.List(ctx)
	if err != nil || len(vols) != 10 {
		t.Fatalf("List = %d volumes, %v", len(vols), err)
	}
	if n := len(r.targets()); n != 10 {
		t.Fatalf("%d targets for 10 volumes", n)
	}
}

func TestRealTgtdRestartExportsAgainAtAttach(t *testing.T) {
	r := newRealEnv(t)
	a := r.agent(nil, "node-a", initA, true, nil)
	b := r.agent(nil, "node-b", initB, true, nil)
	for _, name := range []string{"kept", "idle"} {
		if _, err := a.b.Create(ctx, backends.CreateRequest{Name: name, SizeBytes: 4 * mib}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.b.Attach(ctx, "kept", backends.AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	kept, idle := realPrefix+":kept", realPrefix+":idle"

	r.tgtd.Restart() // the target host rebooted: tgtd has no targets
	if n := len(r.targets()); n != 0 {
		t.Fatalf("%d targets after the restart", n)
	}
	v, err := b.b.Get(ctx, "kept")
	if err != nil || !strings.HasPrefix(v.Status["export"].(string), "missing") || v.Status["attached_to"] != "node-a (initiator "+initA+")" {
		t.Fatalf("Get after the restart = %+v, %v", v.Status, err)
	}
	if _, err := r.capacity(initA, kept, nil); err == nil {
		t.Fatal("LUN readable though tgtd lost the target")
	}
	// Another host's attempt exports it again for its holder, and is refused.
	if _, err := b.b.Attach(ctx, "kept", backends.AttachOptions{}); !errors.Is(err, sentinel.ErrInUse) {
		t.Fatalf("node-b Attach = %v", err)
	}
	r.wantCapacity(initA, kept, 4*mib)
	// The holder's attach (its plugin remounting, say) finds it exported.
	if _, err := a.b.Attach(ctx, "kept", backends.AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	r.wantCapacity(initA, kept, 4*mib)
	r.wantRefused(initB, kept)

	// A volume nobody had attached comes back at its first attach.
	if _, ok := r.targets()[idle]; ok {
		t.Fatal("idle volume exported before its attach")
	}
	if _, err := b.b.Attach(ctx, "idle", backends.AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	r.wantCapacity(initB, idle, 4*mib)
	if v, _ := b.b.Get(ctx, "idle"); v.Status["export"] != "ok" {
		t.Fatalf("export status after re-export: %v", v.Status["export"])
	}
}

func TestRealCHAPAndUndoOfAFailedLogin(t *testing.T) {
	r := newRealEnv(t)
	chap := &iscsi.CHAP{Username: "blockvol", Password: "secret-secret"}
	withCHAP := func(c *Config) { c.CHAP = chap }
	a := r.agent(nil, "node-a", initA, true, withCHAP)
	iqn := realPrefix + ":auth"
	if _, err := a.b.Create(ctx, backends.CreateRequest{Name: "auth", SizeBytes: mib}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.b.Attach(ctx, "auth", backends.AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	if n, err := r.capacity(initA, iqn, chap); err != nil || n != mib {
		t.Fatalf("with CHAP: %d, %v", n, err)
	}
	if _, err := r.capacity(initA, iqn, nil); err == nil {
		t.Fatal("logged in without CHAP")
	}
	if _, err := r.capacity(initA, iqn, &iscsi.CHAP{Username: "blockvol", Password: "wrong-wrong-wrong"}); err == nil {
		t.Fatal("logged in with a wrong CHAP password")
	}
	if err := a.b.Detach(ctx, "auth"); err != nil {
		t.Fatal(err)
	}

	// node-b's initiator ignores CHAP: its login fails, and the attach
	// takes its claim and its ACL entry back.
	b := r.agent(nil, "node-b", initB, true, withCHAP)
	inner := b.ini.attach
	b.ini.attach = func(ctx context.Context, t iscsi.Target) (string, error) {
		t.CHAP = nil
		return inner(ctx, t)
	}
	_, err := b.b.Attach(ctx, "auth", backends.AttachOptions{})
	if err == nil || !strings.Contains(err.Error(), "iSCSI login: login of "+initB) {
		t.Fatalf("Attach with a failing login = %v", err)
	}
	if acl := r.acl(iqn); len(acl) != 0 {
		t.Fatalf("ACL after the undo: %v", acl)
	}
	if v, _ := a.b.Get(ctx, "auth"); v.Status["attached_to"] != nil {
		t.Fatalf("claim left after the undo: %v", v.Status["attached_to"])
	}
	if len(b.ini.detached) != 1 {
		t.Fatal("the failed login was not logged out")
	}
	// The volume is free for node-a again.
	if _, err := a.b.Attach(ctx, "auth", backends.AttachOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestRealLockNamesItsHolderAndExpires(t *testing.T) {
	r := newRealEnv(t)
	a := r.agent(nil, "node-a", initA, false, nil)
	b := r.agent(nil, "node-b", initB, false, func(c *Config) { c.LockTimeout = 300 * time.Millisecond })
	if _, err := a.b.Create(ctx, backends.CreateRequest{Name: "v", SizeBytes: mib}); err != nil {
		t.Fatal(err)
	}
	// node-a takes the lock and hangs, ignoring its context: a stuck
	// agent. Its holder on the target host lives 2 s at most.
	a.b.lockHold = 2 * time.Second
	held, unstick, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	start := time.Now()
	go func() {
		_ = a.b.withLock(ctx, "attach", "v", func(ctx context.Context) error {
			close(held)
			<-unstick
			return nil
		})
		close(done)
	}()
	defer func() { close(unstick); <-done }()
	<-held
	err := b.b.SetMeta(ctx, "v", map[string]string{"x": "y"})
	if err == nil || !strings.Contains(err.Error(), "still held after 300ms (holder: host node-a pid "+strconv.Itoa(os.Getpid())+": attach volume v since ") {
		t.Fatalf("SetMeta while node-a holds the lock = %v", err)
	}
	t.Logf("as users see it: %v", err)
	// The stale lock ends with its holder, node-a still stuck.
	b.b.lockWait = 5 * time.Second
	if err := b.b.SetMeta(ctx, "v", map[string]string{"x": "y"}); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < 2*time.Second || waited > 4*time.Second {
		t.Fatalf("lock free after %s; want after the 2 s hold", waited)
	}
}

func TestRealCheck(t *testing.T) {
	r := newRealEnv(t)
	a := r.agent(nil, "node-a", initA, false, nil)
	if err := a.b.Check(ctx); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(r.pool, "gone")
	b := r.agent(nil, "node-a", initA, false, func(c *Config) { c.Pools["ssd"] = other })
	if err := b.b.Check(ctx); err == nil || !strings.Contains(err.Error(), "pool directory "+other+" does not exist") {
		t.Fatalf("Check with a missing pool = %v", err)
	}
	r.tgtd.Stop()
	if err := a.b.Check(ctx); err == nil || !strings.Contains(err.Error(), "tgtd is not answering on control port "+strconv.Itoa(r.tgtd.ControlPort)) {
		t.Fatalf("Check with tgtd stopped = %v", err)
	}
}

func TestRealOverSSH(t *testing.T) {
	r := newRealEnv(t)
	s := testsrv.StartSSHD(t)
	h, err := sshhost.New(sshhost.Config{Addr: s.Addr, User: "root", KeyFile: s.ClientKey, KnownHostsFile: s.KnownHosts})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	a := r.agent(h, "node-a", initA, true, nil)
	b := r.agent(h, "node-b", initB, true, nil)
	iqn := realPrefix + ":remote"
	meta := map[string]string{"fstype": "ext4", "note": "it's $(touch /tmp/blockvol-pwned); `id` \"q\" \\ \n*"}
	// Each call has its own deadline, as the plugin's do.
	call := func() context.Context {
		c, cancel := context.WithTimeout(ctx, 30*time.Second)
		t.Cleanup(cancel)
		return c
	}
	if _, err := a.b.Create(call(), backends.CreateRequest{Name: "remote", SizeBytes: 16 * mib, Meta: meta}); err != nil {
		t.Fatal(err)
	}
	v, err := b.b.Get(call(), "remote")
	if err != nil || !reflect.DeepEqual(v.Meta, meta) {
		t.Fatalf("Get over SSH = %+v, %v; want meta %q verbatim", v.Meta, err, meta)
	}
	if _, err := os.Stat("/tmp/blockvol-pwned"); err == nil {
		t.Fatal("a meta value ran a command on the target host")
	}
	if _, err := a.b.Attach(call(), "remote", backends.AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	r.wantCapacity(initA, iqn, 16*mib)
	if _, err := b.b.Attach(call(), "remote", backends.AttachOptions{}); !errors.Is(err, sentinel.ErrInUse) || !strings.Contains(err.Error(), "node-a") {
		t.Fatalf("node-b Attach over SSH = %v", err)
	}
	if _, err := b.b.Attach(call(), "remote", backends.AttachOptions{Preempt: true}); err != nil {
		t.Fatal(err)
	}
	r.wantRefused(initA, iqn)
	r.wantCapacity(initB, iqn, 16*mib)
	if err := b.b.Detach(call(), "remote"); err != nil {
		t.Fatal(err)
	}
	if err := b.b.Check(call()); err != nil {
		t.Fatal(err)
	}
	if err := a.b.Remove(call(), "remote"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(r.pool, "remote.img")); !os.IsNotExist(err) {
		t.Fatalf("backing file after Remove over SSH: %v", err)
	}

	// Operations of one agent take turns at the lock before they ask the
	// target host: waiting ones hold no SSH session, so even two sessions
	// are enough for many at once.
	narrow, err := sshhost.New(sshhost.Config{Addr: s.Addr, User: "root", KeyFile: s.ClientKey, KnownHostsFile: s.KnownHosts, MaxSessions: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer narrow.Close()
	n := r.agent(narrow, "node-n", initA, false, nil)
	if _, err := n.b.Create(call(), backends.CreateRequest{Name: "busy", SizeBytes: mib}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		cctx := call()
		wg.Go(func() { errs[i] = n.b.SetMeta(cctx, "busy", map[string]string{"writer": strconv.Itoa(i)}) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent SetMeta over 2 SSH sessions: %v", err)
	}
	if err := n.b.Remove(call(), "busy"); err != nil {
		t.Fatal(err)
	}

	// A target host presenting another host key is refused, clearly.
	wrongKey := filepath.Join(t.TempDir(), "k")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", wrongKey).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v %s", err, out)
	}
	pub, _ := os.ReadFile(wrongKey + ".pub")
	f := strings.Fields(string(pub))
	_, port, _ := strings.Cut(s.Addr, ":")
	kh := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(kh, []byte("[127.0.0.1]:"+port+" "+f[0]+" "+f[1]+"\n"), 0o600)
	bad, err := sshhost.New(sshhost.Config{Addr: s.Addr, User: "root", KeyFile: s.ClientKey, KnownHostsFile: kh})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	c := r.agent(bad, "node-c", "iqn.2024-01.org.blockvol.test.host:c", false, nil)
	_, err = c.b.Create(call(), backends.CreateRequest{Name: "never", SizeBytes: mib})
	if err == nil || !strings.Contains(err.Error(), "host key mismatch") || errors.Is(err, sentinel.ErrNotFound) {
		t.Fatalf("Create through a wrong host key = %v", err)
	}
	t.Logf("as users see it: %v", err)
	if _, err := c.b.Get(call(), "anything"); err == nil || errors.Is(err, sentinel.ErrNotFound) {
		t.Fatalf("Get through a wrong host key = %v; must not be 'not found'", err)
	}
}
