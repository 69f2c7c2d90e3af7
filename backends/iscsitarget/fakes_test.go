package iscsitarget

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/iscsi"
)

// The unit tests' world: this host is node1 with initiator me; node2 with
// initiator other is another agent. Pools "default" (/srv/pool, with the
// lock file) and "ssd" (/srv/ssd); tgtd's control port 11.
const (
	testPrefix = "iqn.2024-01.org.example.bv"
	testPortal = "192.0.2.1:3260"
	me         = "iqn.1993-08.org.debian:01:node1"
	other      = "iqn.1993-08.org.debian:01:node2"
	poolDir    = "/srv/pool"
	ssdDir     = "/srv/ssd"
	lockPath   = poolDir + "/.blockvol.lock"
	testPID    = 4242
	gib        = 1 << 30
)

// t0 is the fake clock's time.
var t0 = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)

// fakeHost is a Host whose Run and Hold are scripted by one exact-argv
// hostexec.Fake: a Hold is one call of the script, answering its first
// line. It counts holds and releases.
type fakeHost struct {
	*hostexec.Fake
	mu             sync.Mutex
	held, released int
}

func (h *fakeHost) Hold(ctx context.Context, name string, args ...string) (string, func() error, error) {
	out, err := h.Fake.Run(ctx, name, args...)
	if err != nil {
		return "", nil, err
	}
	h.mu.Lock()
	h.held++
	h.mu.Unlock()
	release := func() error {
		h.mu.Lock()
		h.released++
		h.mu.Unlock()
		return nil
	}
	return strings.TrimSuffix(string(out), "\n"), release, nil
}

// fakeInitiator stands for *iscsi.Initiator.
type fakeInitiator struct {
	name string
	// attach, when set, runs instead of the default (which answers a fake
	// device path).
	attach    func(ctx context.Context, t iscsi.Target) (string, error)
	detachErr error

	mu       sync.Mutex
	attached []iscsi.Target
	detached []iscsi.Target
}

func (f *fakeInitiator) InitiatorName() (string, error) { return f.name, nil }

func (f *fakeInitiator) Attach(ctx context.Context, t iscsi.Target) (string, error) {
	f.mu.Lock()
	f.attached = append(f.attached, t)
	f.mu.Unlock()
	if f.attach != nil {
		return f.attach(ctx, t)
	}
	return "/dev/disk/by-path/ip-" + t.Portals[0] + "-iscsi-" + t.IQN + "-lun-" + strconv.Itoa(t.LUN), nil
}

func (f *fakeInitiator) Detach(ctx context.Context, t iscsi.Target) error {
	f.mu.Lock()
	f.detached = append(f.detached, t)
	f.mu.Unlock()
	return f.detachErr
}

// env is one unit test's backend over scripted target host commands.
type env struct {
	t    *testing.T
	host *fakeHost
	ini  *fakeInitiator
	b    *Backend
}

func newEnv(t *testing.T, mod func(*Config), calls ...hostexec.Call) *env {
	t.Helper()
	cfg := Config{
		Portal:         testPortal,
		IQNPrefix:      testPrefix,
		Pools:          map[string]string{"default": poolDir, "ssd": ssdDir},
		DefaultPool:    "default",
		TGTControlPort: 11,
		HostName:       "node1",
	}
	if mod != nil {
		mod(&cfg)
	}
	e := &env{t: t, host: &fakeHost{Fake: hostexec.NewFake(t, calls...)}, ini: &fakeInitiator{name: me}}
	b, err := New(cfg, e.host, e.ini, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	b.now = func() time.Time { return t0 }
	b.pid = testPID
	e.b = b
	t.Cleanup(func() {
		e.host.Done()
		e.host.mu.Lock()
		defer e.host.mu.Unlock()
		if e.host.held != e.host.released {
			t.Errorf("lock taken %d times but released %d times", e.host.held, e.host.released)
		}
	})
	return e
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// --- scripted calls --------------------------------------------------------

// lockCall is the lock holder of op on vol, answering "locked".
func lockCall(op, vol string) hostexec.Call {
	owner := fmt.Sprintf("host node1 pid %d: %s volume %s since 2024-01-02T03:04:05Z", testPID, op, vol)
	lock := lockPath + "." + vol
	argv := append([]string{"flock", "-s", "-w", "30", "-E", "75", "--", lockPath,
		"flock", "-w", "30", "-E", "75", "--", lock, "timeout", "120"},
		helperArgv("hold", lock, owner)...)
	return hostexec.Call{Argv: argv, Stdout: "locked\n"}
}

// item is one entry of the helper's scan output.
type item struct{ kind, dir, name, content string }

func recItem(dir string, r record) item {
	data, err := json.Marshal(r)
	if err != nil {
		panic(err)
	}
	return item{"record", dir, r.Name, string(data) + "\n"}
}

func imgItem(dir, name string) item { return item{"image", dir, name, ""} }

// vol is a volume's record and backing file in dir.
func vol(dir string, r record) []item { return []item{recItem(dir, r), imgItem(dir, r.Name)} }

// scanCall is the helper's scan of name ("" = all) answering items.
func scanCall(name string, items ...[]item) hostexec.Call {
	var out strings.Builder
	for _, group := range items {
		for _, it := range group {
			fmt.Fprintf(&out, "%s\x00%s\x00%s\x00%s\x00", it.kind, it.dir, it.name, it.content)
		}
	}
	return hostexec.Call{Argv: helperArgv("scan", name, poolDir, ssdDir), Stdout: out.String()}
}

func writeCall(dir string, r record) hostexec.Call {
	data, err := json.Marshal(r)
	if err != nil {
		panic(err)
	}
	return hostexec.Call{Argv: helperArgv("write", dir+"/"+r.Name+".json", string(data))}
}

func helperCall(op string, args ...string) hostexec.Call {
	return hostexec.Call{Argv: helperArgv(op, args...)}
}

func tgtadm(args ...string) []string {
	return append([]string{"tgtadm", "-C", "11", "--lld", "iscsi"}, args...)
}

func tgtCall(args ...string) hostexec.Call { return hostexec.Call{Argv: tgtadm(args...)} }

// lunIDCall gives LUN 1 of target tid (iqn) its identity.
func lunIDCall(tid, iqn string) hostexec.Call {
	return tgtCall("--mode", "logicalunit", "--op", "update", "--tid", tid, "--lun", "1", "--params", lunParams(iqn))
}

// tgtRefusal is a tgtadm call that tgtd refuses with msg.
func tgtRefusal(msg string, args ...string) hostexec.Call {
	return hostexec.Call{Argv: tgtadm(args...), Code: 22, Stderr: "tgtadm: " + msg + "\n"}
}

// target is one target in a fake `tgtadm --op show`.
type target struct {
	tid       int
	iqn, file string
	acl       []string
	accounts  []string
	sessions  []session
}

// showCall is `tgtadm --mode target --op show` listing targets, in tgt's
// format.
func showCall(targets ...target) hostexec.Call {
	var b strings.Builder
	for _, t := range targets {
		fmt.Fprintf(&b, "Target %d: %s\n    System information:\n        Driver: iscsi\n        State: ready\n    I_T nexus information:\n", t.tid, t.iqn)
		for _, s := range t.sessions {
			fmt.Fprintf(&b, "        I_T nexus: %d\n            Initiator: %s alias: none\n", s.id, s.initiator)
			for _, c := range s.conns {
				fmt.Fprintf(&b, "            Connection: %d\n                IP Address: 192.0.2.77\n", c)
			}
		}
		b.WriteString("    LUN information:\n        LUN: 0\n            Type: controller\n            Backing store type: null\n            Backing store path: None\n            Backing store flags: \n")
		if t.file != "" {
			fmt.Fprintf(&b, "        LUN: 1\n            Type: disk\n            Size: 1074 MB, Block size: 512\n            Backing store type: rdwr\n            Backing store path: %s\n            Backing store flags: \n", t.file)
		}
		b.WriteString("    Account information:\n")
		for _, a := range t.accounts {
			fmt.Fprintf(&b, "        %s\n", a)
		}
		b.WriteString("    ACL information:\n")
		for _, a := range t.acl {
			fmt.Fprintf(&b, "        %s\n", a)
		}
	}
	return hostexec.Call{Argv: tgtadm("--mode", "target", "--op", "show"), Stdout: b.String()}
}

// rec is the record of volume name, 1 GiB in the default pool, not
// attached.
func rec(name string) record {
	return record{
		Name:      name,
		SizeBytes: gib,
		CreatedAt: t0.Add(-time.Hour),
		Type:      "default",
		IQN:       testPrefix + ":" + name,
		Meta:      map[string]string{"fstype": "ext4"},
	}
}

func attachedTo(r record, host, initiator string) record {
	r.Attached = &attachment{Host: host, Initiator: initiator, Since: t0.Add(-time.Minute)}
	return r
}

// exported is volume r's target in the default pool.
func exported(tid int, r record) target {
	return target{tid: tid, iqn: r.IQN, file: poolDir + "/" + r.Name + ".img"}
}
