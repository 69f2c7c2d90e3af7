package cinder

// Tests against a real Keystone and Cinder (Debian's packages) with a
// file-backed volume driver exporting through Cinder's TgtAdm helper to a
// real tgtd at 127.0.0.1:3260: see test/openstack/setup.sh, which CI runs
// first. The services are started by the first test that needs them and
// stopped by TestMain (unless they were running already). The kernel here
// has no iSCSI initiator, so the backend's initiator is a fake that proves
// the returned target with libiscsi's iscsi-inq.

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/snapshots"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumes"

	"github.com/blockvol/blockvol/internal/testenv"
	"github.com/blockvol/blockvol/iscsi"
)

const (
	keystoneURL = "http://127.0.0.1:5000/v3"
	cinderRoot  = "http://127.0.0.1:8776/"
	// testPrefix starts the name of every volume the tests make, so that
	// leftovers of an interrupted run can be cleared.
	testPrefix = "bvtest-"
)

var cloud struct {
	once    sync.Once
	err     error
	started bool // by us: stop at the end
	script  string
	took    time.Duration
}

func TestMain(m *testing.M) {
	// Another package (test/vm) may use the services at the same time:
	// stop them only once it is done.
	use, _ := testenv.UseOpenStack() // nil where it cannot be had (not root): then nothing is shared
	code := m.Run()
	var stop func() error
	if cloud.started {
		stop = func() error {
			t0 := time.Now()
			if out, err := runSetup("stop"); err != nil {
				return fmt.Errorf("%w\n%s", err, out)
			}
			fmt.Fprintf(os.Stderr, "OpenStack test services: started in %.1fs, stopped in %.1fs\n", cloud.took.Seconds(), time.Since(t0).Seconds())
			return nil
		}
	}
	if err := use.Done(stop); err != nil {
		fmt.Fprintf(os.Stderr, "stopping the OpenStack test services: %v\n", err)
		code = max(code, 1)
	}
	os.Exit(code)
}

// requireCloud skips t in -short mode, and when not root or the services
// are not installed (failing instead with BLOCKVOL_NO_SKIP=1, as in CI);
// otherwise it starts the services once.
func requireCloud(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs the OpenStack test services (not in -short mode)")
	}
	testenv.RequireRoot(t)
	for _, p := range []string{"keystone-manage", "cinder-api", "cinder-scheduler", "cinder-volume", "mariadbd", "tgtd", "tgtadm", "uwsgi", "iscsi-inq", "/usr/lib/rabbitmq/bin/rabbitmq-server"} {
		if _, err := exec.LookPath(p); err != nil {
			testenv.Skip(t, "the OpenStack test services are not installed ("+p+" missing): run test/openstack/setup.sh")
		}
	}
	cloud.once.Do(startCloud)
	if cloud.err != nil {
		t.Fatal(cloud.err)
	}
}

func startCloud() {
	script, err := filepath.Abs("../../test/openstack/setup.sh")
	if err != nil {
		cloud.err = err
		return
	}
	cloud.script = script
	running := httpUp(keystoneURL) && httpUp(cinderRoot)
	t0 := time.Now()
	if out, err := runSetup("start"); err != nil {
		if bytes.Contains(out, []byte("not initialised")) {
			out, err = runSetup("init")
		}
		if err != nil {
			cloud.err = fmt.Errorf("starting the OpenStack test services: %v\n%s", err, out)
			return
		}
	}
	cloud.took = time.Since(t0)
	cloud.started = !running
	cloud.err = clearLeftovers()
}

// runSetup runs setup.sh with its output in a file: the daemons it starts
// must not hold the test's stdout or stderr open.
func runSetup(arg string) ([]byte, error) {
	f, err := os.CreateTemp("", "blockvol-openstack-*.log")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", cloud.script, arg)
	cmd.Stdout, cmd.Stderr = f, f
	err = cmd.Run()
	out, _ := os.ReadFile(f.Name())
	return out, err
}

func httpUp(u string) bool {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(u)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode < 500
}

// clearLeftovers deletes the test volumes of an interrupted earlier run,
// in every project, force-detaching them first (as admin).
func clearLeftovers() error {
	cfg := adminConfig("cleanup", AttachAuto)
	cfg.StateDir, cfg.HostUUID = os.TempDir(), "00000000-0000-4000-8000-000000000000"
	b, err := New(cfg, &fakeInitiator{name: "iqn.2024-01.test:cleanup"}, nil)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := b.client(ctx)
	if err != nil {
		return err
	}
	// Snapshots first: Cinder keeps a volume that has some.
	snaps, err := b.listSnapshots(ctx, c, snapshots.ListOpts{AllTenants: true})
	if err != nil {
		return err
	}
	for _, sn := range snaps {
		if strings.HasPrefix(sn.Name, testPrefix) {
			if err := b.deleteSnapshot(ctx, c, sn.ID); err != nil {
				fmt.Fprintf(os.Stderr, "clearing leftover test snapshot %s: %v\n", sn.ID, err)
			}
		}
	}
	vs, err := b.listVolumes(ctx, c, volumes.ListOpts{AllTenants: true})
	if err != nil {
		return err
	}
	for _, v := range vs {
		if !strings.HasPrefix(v.Name, testPrefix) {
			continue
		}
		if busy(&v) {
			_, _ = b.forceDetachAll(ctx, c, &v, b.log)
			_, _ = b.waitVolume(ctx, c, v.ID, func(w *volumes.Volume) bool { return !busy(w) })
		}
		if err := b.deleteVolume(ctx, c, v.ID); err != nil {
			fmt.Fprintf(os.Stderr, "clearing leftover test volume %s: %v\n", v.ID, err)
		}
	}
	return nil
}

func adminConfig(host, api string) Config {
	return Config{
		AuthURL: keystoneURL, Username: "admin", Password: "secret", UserDomainName: "Default",
		ProjectName: "admin", ProjectDomainName: "Default", Region: "RegionOne",
		AttachAPI: api, HostName: host, InitiatorIP: "127.0.0.1",
	}
}

func demoConfig(host, api string) Config {
	c := adminConfig(host, api)
	c.Username, c.Password, c.ProjectName = "demo", "demopass", "demo"
	return c
}

// newCloudBackend returns a backend of cfg with its own host UUID, state
// directory and fake initiator, logging to t.
func newCloudBackend(t testing.TB, cfg Config, ini *fakeInitiator) *Backend {
	t.Helper()
	if cfg.StateDir == "" {
		cfg.StateDir = t.TempDir()
	}
	if cfg.HostUUID == "" && cfg.HostUUIDFile == "" {
		cfg.HostUUIDFile = filepath.Join(cfg.StateDir, "host-uuid")
	}
	b, err := New(cfg, ini, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	<-b.warm
	return b
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// volName returns a volume name unique to this run.
func volName(t testing.TB) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	n := strings.NewReplacer("/", "-", "_", "-").Replace(strings.ToLower(t.Name()))
	return fmt.Sprintf("%s%s-%x", testPrefix, n[:min(len(n), 40)], b)
}

// fakeInitiator stands in for the iSCSI initiator. By default Attach
// proves the target with iscsi-inq (login with the given CHAP, SCSI
// INQUIRY of the LUN) and returns a made-up device; hooks inject failures
// or observe the state of the volume in the middle of the sequence.
type fakeInitiator struct {
	name  string
	probe bool // run iscsi-inq on Attach

	mu        sync.Mutex
	attached  []iscsi.Target
	detached  []iscsi.Target
	rescanned []iscsi.Target
	onAttach  func(ctx context.Context, t iscsi.Target) error
	onDetach  func(ctx context.Context, t iscsi.Target) error
}

func (f *fakeInitiator) InitiatorName() (string, error) { return f.name, nil }

func (f *fakeInitiator) Rescan(_ context.Context, t iscsi.Target) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rescanned = append(f.rescanned, t)
	return nil
}

func (f *fakeInitiator) Attach(ctx context.Context, t iscsi.Target) (string, error) {
	f.mu.Lock()
	f.attached = append(f.attached, t)
	hook := f.onAttach
	f.mu.Unlock()
	if f.probe {
		if out, err := iscsiInq(ctx, f.name, t, t.CHAP); err != nil {
			return "", fmt.Errorf("iscsi-inq: %v: %s", err, out)
		}
	}
	if hook != nil {
		if err := hook(ctx, t); err != nil {
			return "", err
		}
	}
	return fmt.Sprintf("/dev/disk/by-path/ip-%s-iscsi-%s-lun-%d", t.Portals[0], t.IQN, t.LUN), nil
}

func (f *fakeInitiator) Detach(ctx context.Context, t iscsi.Target) error {
	f.mu.Lock()
	f.detached = append(f.detached, t)
	hook := f.onDetach
	f.mu.Unlock()
	if hook != nil {
		return hook(ctx, t)
	}
	return nil
}

func (f *fakeInitiator) counts() (attached, detached int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.attached), len(f.detached)
}

func (f *fakeInitiator) lastAttached() iscsi.Target {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.attached[len(f.attached)-1]
}

// iscsiInq logs in to t's first portal as initiator name with chap (nil:
// no CHAP) and sends a SCSI INQUIRY to its LUN.
func iscsiInq(ctx context.Context, name string, t iscsi.Target, chap *iscsi.CHAP) (string, error) {
	cred := ""
	if chap != nil {
		cred = chap.Username + "%" + chap.Password + "@"
	}
	u := fmt.Sprintf("iscsi://%s%s/%s/%d", cred, t.Portals[0], t.IQN, t.LUN)
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "iscsi-inq", "-i", name, u).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// cinderVolume reads a volume directly (an observer's view).
func cinderVolume(t testing.TB, b *Backend, name string) *volumes.Volume {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := b.client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v, err := b.find(ctx, c, name)
	if err != nil {
		t.Fatalf("find %s: %v", name, err)
	}
	return v
}

// volumeStatus reads a volume's status by ID, from inside a hook.
func volumeStatus(ctx context.Context, b *Backend, id string) (string, error) {
	c, err := b.client(ctx)
	if err != nil {
		return "", err
	}
	v, err := volumes.Get(ctx, c.base(), id).Extract()
	if err != nil {
		return "", err
	}
	return v.Status, nil
}

// attachmentCount lists every attachment of a volume, reserved ones
// included (attachments API, admin view).
func attachmentCount(t testing.TB, b *Backend, v *volumes.Volume) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := b.client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return len(b.attachmentIDs(ctx, c, v, b.log))
}

// tgtTargets returns `tgtadm --op show --mode target` of Cinder's tgtd.
func tgtTargets(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target").CombinedOutput()
	if err != nil {
		t.Fatalf("tgtadm: %v: %s", err, out)
	}
	return string(out)
}

// mustRemove removes a volume at the end of a test, force-detaching it
// through admin first if a failing test left it attached.
func mustRemove(t testing.TB, b *Backend, name string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c, err := b.client(ctx)
		if err != nil {
			t.Errorf("cleanup of %s: %v", name, err)
			return
		}
		v, err := b.find(ctx, c, name)
		if err != nil {
			return
		}
		if busy(v) {
			_, _ = b.forceDetachAll(ctx, c, v, b.log)
			_, _ = b.waitVolume(ctx, c, v.ID, func(w *volumes.Volume) bool { return !busy(w) })
		}
		if err := b.deleteVolume(ctx, c, v.ID); err != nil && !errors.Is(err, io.EOF) {
			t.Errorf("cleanup of %s: %v", name, err)
		}
	})
}
