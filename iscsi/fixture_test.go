package iscsi

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blockvol/blockvol/hostexec"
)

const (
	testIQN = "iqn.2003-01.org.linux-iscsi.host:vol1"
	portalA = "127.0.0.1:3260"
	portalB = "127.0.0.2:3260"
)

// tree is a fake sysfs + /dev + mountinfo, laid out as the kernel does.
type tree struct {
	t         *testing.T
	sys, dev  string
	mountinfo string
	minor     int
}

func newTree(t *testing.T) *tree {
	t.Helper()
	root := t.TempDir()
	tr := &tree{t: t, sys: filepath.Join(root, "sys"), dev: filepath.Join(root, "dev"), mountinfo: filepath.Join(root, "mountinfo")}
	for _, d := range []string{
		filepath.Join(tr.sys, "class", "iscsi_session"),
		filepath.Join(tr.sys, "class", "iscsi_connection"),
		filepath.Join(tr.sys, "block"),
		tr.dev,
	} {
		tr.mkdir(d)
	}
	tr.write(tr.mountinfo, "22 1 0:21 / /proc rw,nosuid - proc proc rw\n"+
		"25 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/vg-root rw\n")
	return tr
}

func (tr *tree) mkdir(p string) {
	tr.t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		tr.t.Fatal(err)
	}
}

func (tr *tree) write(p, content string) {
	tr.t.Helper()
	tr.mkdir(filepath.Dir(p))
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		tr.t.Fatal(err)
	}
}

func (tr *tree) symlink(target, link string) {
	tr.t.Helper()
	tr.mkdir(filepath.Dir(link))
	if err := os.Symlink(target, link); err != nil {
		tr.t.Fatal(err)
	}
}

// addSession creates sessionN of iqn through addr:port.
func (tr *tree) addSession(n int, iqn, addr string, port int) {
	s := filepath.Join(tr.sys, "class", "iscsi_session", fmt.Sprintf("session%d", n))
	tr.write(filepath.Join(s, "targetname"), iqn+"\n")
	tr.write(filepath.Join(s, "state"), "LOGGED_IN\n")
	c := filepath.Join(tr.sys, "class", "iscsi_connection", fmt.Sprintf("connection%d:0", n))
	tr.write(filepath.Join(c, "persistent_address"), addr+"\n")
	tr.write(filepath.Join(c, "persistent_port"), fmt.Sprintf("%d\n", port))
	tr.write(filepath.Join(c, "address"), addr+"\n")
	tr.write(filepath.Join(c, "port"), fmt.Sprintf("%d\n", port))
}

// addLUN creates the H:C:T:L/block/<name> chain of LUN lun under sessionN
// (host number = N+1), /sys/block/<name> and /dev/<name>. It returns the
// device's major:minor.
func (tr *tree) addLUN(session, lun int, name string) string {
	host := session + 1
	scsi := filepath.Join(tr.sys, "class", "iscsi_session", fmt.Sprintf("session%d", session),
		"device", fmt.Sprintf("target%d:0:0", host), fmt.Sprintf("%d:0:0:%d", host, lun))
	tr.write(filepath.Join(scsi, "delete"), "")
	block := filepath.Join(scsi, "block", name)
	tr.minor += 16
	majmin := fmt.Sprintf("8:%d", tr.minor)
	tr.write(filepath.Join(block, "dev"), majmin+"\n")
	tr.mkdir(filepath.Join(block, "holders"))
	tr.symlink(block, filepath.Join(tr.sys, "block", name))
	tr.write(filepath.Join(tr.dev, name), "")
	return majmin
}

// addPartition creates partition part of disk name.
func (tr *tree) addPartition(name, part, majmin string) {
	p := filepath.Join(tr.sys, "block", name, part)
	tr.write(filepath.Join(p, "partition"), "1\n")
	tr.write(filepath.Join(p, "dev"), majmin+"\n")
	tr.mkdir(filepath.Join(p, "holders"))
	tr.write(filepath.Join(tr.dev, part), "")
}

// addByPath creates the udev by-path link of a LUN.
func (tr *tree) addByPath(addr string, port int, iqn string, lun int, name string) string {
	link := filepath.Join(tr.dev, "disk", "by-path", fmt.Sprintf("ip-%s:%d-iscsi-%s-lun-%d", addr, port, iqn, lun))
	tr.symlink("../../"+name, link)
	return link
}

// addDM creates dm device dm named mapName over slaves; uuid decides
// whether it is a multipath map ("mpath-...") or something else (LVM). The
// /dev nodes come first and the slaves links last, so that a concurrent
// lookup sees either no map or a complete one.
func (tr *tree) addDM(dm, mapName, uuid string, slaves ...string) {
	tr.write(filepath.Join(tr.dev, dm), "")
	tr.symlink("../"+dm, filepath.Join(tr.dev, "mapper", mapName))
	d := filepath.Join(tr.sys, "block", dm)
	tr.write(filepath.Join(d, "dm", "name"), mapName+"\n")
	tr.write(filepath.Join(d, "dm", "uuid"), uuid+"\n")
	tr.write(filepath.Join(d, "dev"), "253:"+strings.TrimPrefix(dm, "dm-")+"\n")
	tr.mkdir(filepath.Join(d, "holders"))
	for _, s := range slaves {
		tr.write(filepath.Join(tr.sys, "block", s, "holders", dm), "")
	}
	for _, s := range slaves {
		tr.write(filepath.Join(d, "slaves", s), "")
	}
}

// mount appends a mountinfo line.
func (tr *tree) mount(majmin, source, point string) {
	f, err := os.OpenFile(tr.mountinfo, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		tr.t.Fatal(err)
	}
	defer f.Close()
	fmt.Fprintf(f, "40 25 %s / %s rw,relatime shared:7 - ext4 %s rw\n", majmin, point, source)
}

// syncBuffer is a bytes.Buffer safe for concurrent log writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newTestInitiator returns an Initiator over tr with fast timings, and the
// buffer its debug-level log goes to.
func newTestInitiator(t *testing.T, tr *tree, run hostexec.Runner, mod func(*Config)) (*Initiator, *syncBuffer) {
	t.Helper()
	cfg := Config{
		SysRoot:         tr.sys,
		DevRoot:         tr.dev,
		MountInfoPath:   tr.mountinfo,
		PollInterval:    10 * time.Millisecond,
		DeviceTimeout:   2 * time.Second,
		LoginTimeout:    2 * time.Second,
		LogoutTimeout:   2 * time.Second,
		MultipathActive: func(context.Context) bool { return false },
	}
	if mod != nil {
		mod(&cfg)
	}
	logs := &syncBuffer{}
	i, err := New(cfg, run, newLogger(logs))
	if err != nil {
		t.Fatal(err)
	}
	return i, logs
}

// newLogger logs everything, debug included, as text to w.
func newLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// adm is an iscsiadm argv.
func adm(args ...string) []string { return append([]string{"iscsiadm"}, args...) }

// blockOn wraps a Runner: the call with argv blocks until its context ends,
// as a hung iscsiadm killed by its timeout would.
type blockOn struct {
	hostexec.Runner
	argv []string
}

func (b blockOn) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	if strings.Join(append([]string{name}, args...), " ") == strings.Join(b.argv, " ") {
		<-ctx.Done()
		return nil, fmt.Errorf("%s: %w", name, ctx.Err())
	}
	return b.Runner.Run(ctx, name, args...)
}

// byPortal is a Runner for Attach's parallel portals: each iscsiadm call
// goes to the Fake of its portal (the value after -p) and every other call
// to rest, so that the calls of one portal keep their scripted order while
// the portals' calls interleave freely. Every call is also appended to
// order, as made.
type byPortal struct {
	portals map[string]*hostexec.Fake
	rest    *hostexec.Fake

	mu    sync.Mutex
	order [][]string
}

func newByPortal(t *testing.T, scripts map[string][]hostexec.Call, rest ...hostexec.Call) *byPortal {
	b := &byPortal{portals: map[string]*hostexec.Fake{}, rest: hostexec.NewFake(t, rest...)}
	for p, calls := range scripts {
		b.portals[p] = hostexec.NewFake(t, calls...)
	}
	return b
}

func (b *byPortal) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	b.mu.Lock()
	b.order = append(b.order, append([]string{name}, args...))
	b.mu.Unlock()
	for k := 0; k+1 < len(args); k++ {
		if args[k] == "-p" {
			if f, ok := b.portals[args[k+1]]; ok {
				return f.Run(ctx, name, args...)
			}
		}
	}
	return b.rest.Run(ctx, name, args...)
}

// Done reports the scripted calls that were never made.
func (b *byPortal) Done() {
	for _, f := range b.portals {
		f.Done()
	}
	b.rest.Done()
}

// tuned returns the calls Attach makes to log in to portal through an
// explicit node record with the default Config: the record, the session
// timeouts, then the login answering code (0: success).
func tuned(portal string, loginCode int) []hostexec.Call {
	node := func(rest ...string) []string {
		return adm(append([]string{"-m", "node", "-T", testIQN, "-p", portal}, rest...)...)
	}
	return []hostexec.Call{
		{Argv: node("-o", "new")},
		{Argv: node("-o", "update", "-n", "node.session.timeo.replacement_timeout", "-v", "15")},
		{Argv: node("-o", "update", "-n", "node.conn[0].timeo.login_timeout", "-v", "5")},
		{Argv: node("-o", "update", "-n", "node.session.initial_login_retry_max", "-v", "0")},
		{Argv: node("--login"), Code: loginCode},
	}
}
