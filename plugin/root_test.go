package plugin_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blockvol/blockvol/internal/testenv"

	"github.com/docker/go-plugins-helpers/volume"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/backends/loop"
	"github.com/blockvol/blockvol/fs"
	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/plugin"
	"github.com/blockvol/blockvol/volumes"
)

// realHost is a plugin over the real loop backend and real filesystems,
// all of its directories in a temporary tree.
type realHost struct {
	t                         testing.TB
	stateDir, dataDir, mntDir string
	d                         *plugin.Driver
	core                      *volumes.Core
	fs                        *fs.FS
	releaseDelay              time.Duration // volumes.Config.ReleaseDelay at the next restart
	fsRuns                    *runLog       // the programs h.fs ran
}

// runLog is a hostexec.Runner that runs programs and logs their names.
type runLog struct {
	mu    sync.Mutex
	names []string
}

func (l *runLog) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	l.mu.Lock()
	l.names = append(l.names, name)
	l.mu.Unlock()
	return hostexec.OS{}.Run(ctx, name, args...)
}

// take returns the names logged and empties the log.
func (l *runLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.names
	l.names = nil
	return n
}

func requireRootTools(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Skip(t, "needs root (loop devices, mount)")
	}
	for _, tool := range []string{"losetup", "mkfs.ext4", "mkfs.xfs", "blkid", "wipefs", "e2fsck"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Skip(t, tool+" not installed")
		}
	}
}

func newRealHost(t testing.TB) *realHost {
	t.Helper()
	requireRootTools(t)
	root := t.TempDir()
	h := &realHost{t: t, stateDir: filepath.Join(root, "state"), dataDir: filepath.Join(root, "loop"), mntDir: filepath.Join(root, "mnt")}
	h.restart()
	t.Cleanup(h.cleanup)
	return h
}

// restart builds a new Driver over the same directories, as a plugin
// process restarted after kill -9 would, and runs its recovery.
func (h *realHost) restart() {
	h.t.Helper()
	log := slog.New(slog.DiscardHandler)
	be, err := loop.New(loop.Config{DataDir: h.dataDir}, hostexec.OS{}, log)
	if err != nil {
		h.t.Fatal(err)
	}
	h.fsRuns = &runLog{}
	h.fs = &fs.FS{Run: h.fsRuns, Mounter: fs.SyscallMounter{}, Log: log}
	core, err := volumes.New(volumes.Config{
		Backends:       map[string]backends.Backend{"local": be},
		FS:             h.fs,
		ParseMountOpts: fs.ParseMountOptions,
		StateDir:       h.stateDir,
		MountDir:       h.mntDir,
		Defaults:       volumes.OptionDefaults{Size: "64M", FSType: "ext4", Backend: "local"},
		CreateTimeout:  time.Minute,
		MountTimeout:   time.Minute,
		OtherTimeout:   time.Minute,
		ReleaseDelay:   h.releaseDelay,
		Log:            log,
	})
	if err != nil {
		h.t.Fatal(err)
	}
	h.d, h.core = plugin.New(core), core
	if err := core.Recover(h.t.Context()); err != nil {
		h.t.Fatal(err)
	}
}

// cleanup unmounts and detaches whatever a failed test left behind.
func (h *realHost) cleanup() {
	entries, _ := os.ReadDir(h.mntDir)
	for _, e := range entries {
		exec.Command("umount", "-l", filepath.Join(h.mntDir, e.Name())).Run()
	}
	for _, dev := range loopsUnder(h.dataDir) {
		exec.Command("losetup", "-d", dev).Run()
	}
}

// loopsUnder lists the loop devices backed by a file under dir.
func loopsUnder(dir string) []string {
	var out []string
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err == nil && strings.HasPrefix(strings.TrimSpace(string(b)), dir+"/") {
			out = append(out, "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(f))))
		}
	}
	return out
}

func (h *realHost) mount(name, id string) string {
	h.t.Helper()
	res, err := h.d.Mount(&volume.MountRequest{Name: name, ID: id})
	if err != nil {
		h.t.Fatalf("Mount %s: %v", name, err)
	}
	return res.Mountpoint
}

func (h *realHost) unmount(name, id string) {
	h.t.Helper()
	if err := h.d.Unmount(&volume.UnmountRequest{Name: name, ID: id}); err != nil {
		h.t.Fatalf("Unmount %s: %v", name, err)
	}
}

// assertNothingLeft checks that no mount and no loop device remain.
func (h *realHost) assertNothingLeft(name string) {
	h.t.Helper()
	mp := filepath.Join(h.mntDir, name)
	if dev, err := h.fs.MountedDevice(mp); err != nil || dev != "" {
		h.t.Fatalf("%s still mounted from %q (%v)", mp, dev, err)
	}
	// Loop detach completes asynchronously in the kernel.
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for len(loopsUnder(h.dataDir)) > 0 {
		if time.Now().After(deadline) {
			h.t.Fatalf("loop devices left: %v", loopsUnder(h.dataDir))
		}
		<-tick.C
	}
}

const (
	rid1 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	rid2 = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

func TestRootVolumeLifecycle(t *testing.T) {
	for _, tc := range []struct{ fstype, size string }{{"ext4", "64M"}, {"xfs", "512M"}} {
		t.Run(tc.fstype, func(t *testing.T) {
			h := newRealHost(t)
			if err := h.d.Create(&volume.CreateRequest{Name: "data", Options: map[string]string{"size": tc.size, "fstype": tc.fstype, "mountopts": "noatime"}}); err != nil {
				t.Fatal(err)
			}
			mp := h.mount("data", rid1)
			entries, err := os.ReadDir(mp)
			if err != nil || len(entries) != 0 {
				t.Fatalf("a fresh volume's root holds %v (%v); want it empty", entries, err)
			}
			dev, _ := h.fs.MountedDevice(mp)
			out, err := exec.Command("blkid", "-p", "-o", "value", "-s", "TYPE", dev).Output()
			if err != nil || strings.TrimSpace(string(out)) != tc.fstype {
				t.Fatalf("blkid on %s: %q %v", dev, out, err)
			}
			size, err := exec.Command("blockdev", "--getsize64", dev).Output()
			if want, _ := volumes.ParseSize(tc.size); err != nil || strings.TrimSpace(string(size)) != strconv.FormatInt(want, 10) {
				t.Fatalf("device size %q, want %d", size, want)
			}
			if err := os.WriteFile(filepath.Join(mp, "hello"), []byte("kept"), 0o644); err != nil {
				t.Fatal(err)
			}
			h.unmount("data", rid1)
			h.assertNothingLeft("data")

			mp = h.mount("data", rid2)
			if b, err := os.ReadFile(filepath.Join(mp, "hello")); err != nil || string(b) != "kept" {
				t.Fatalf("data after remount: %q %v", b, err)
			}
			h.unmount("data", rid2)
			if err := h.d.Remove(&volume.RemoveRequest{Name: "data"}); err != nil {
				t.Fatal(err)
			}
			if left, _ := os.ReadDir(h.dataDir); len(left) != 0 {
				t.Fatalf("files left in the data dir after Remove: %v", left)
			}
			h.assertNothingLeft("data")
		})
	}
}

// kill -9 of the plugin while two containers use a volume: the restarted
// plugin keeps the mount, and both Unmounts then work.
func TestRootRestartKeepsMounts(t *testing.T) {
	h := newRealHost(t)
	if err := h.d.Create(&volume.CreateRequest{Name: "live"}); err != nil {
		t.Fatal(err)
	}
	mp := h.mount("live", rid1)
	h.mount("live", rid2)
	h.restart()
	if err := os.WriteFile(filepath.Join(mp, "after-restart"), []byte("x"), 0o644); err != nil {
		t.Fatalf("volume not writable after plugin restart: %v", err)
	}
	res, err := h.d.Get(&volume.GetRequest{Name: "live"})
	if err != nil || res.Volume.Mountpoint != mp || res.Volume.Status["mounts"] != 2 {
		t.Fatalf("Get after restart = %+v, %v", res, err)
	}
	h.unmount("live", rid1)
	if dev, _ := h.fs.MountedDevice(mp); dev == "" {
		t.Fatal("first Unmount after restart pulled the volume from the second container")
	}
	h.unmount("live", rid2)
	h.assertNothingLeft("live")
}

func TestRootOverwriteFSWipesOnce(t *testing.T) {
	h := newRealHost(t)
	if err := h.d.Create(&volume.CreateRequest{Name: "ow", Options: map[string]string{"size": "512M", "fstype": "xfs", "overwritefs": "true"}}); err != nil {
		t.Fatal(err)
	}
	// The volume already holds an ext4 filesystem with a file on it.
	img := filepath.Join(h.dataDir, "ow.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "OLD", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v %s", err, out)
	}
	mp := h.mount("ow", "")
	dev, _ := h.fs.MountedDevice(mp)
	out, _ := exec.Command("blkid", "-p", "-o", "export", dev).Output()
	if !strings.Contains(string(out), "TYPE=xfs") || strings.Contains(string(out), "LABEL=OLD") {
		t.Fatalf("overwritefs=true did not replace the old filesystem: %s", out)
	}
	if err := os.WriteFile(filepath.Join(mp, "new"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.unmount("ow", "")
	mp = h.mount("ow", "")
	if _, err := os.Stat(filepath.Join(mp, "new")); err != nil {
		t.Fatalf("the second mount wiped the volume again: %v", err)
	}
	h.unmount("ow", "")
	h.assertNothingLeft("ow")
}

func TestRootForeignSignatureNeverFormatted(t *testing.T) {
	h := newRealHost(t)
	if err := h.d.Create(&volume.CreateRequest{Name: "pt", Options: map[string]string{"overwritefs": "true"}}); err != nil {
		t.Fatal(err)
	}
	// An MBR partition table with one Linux partition.
	img := filepath.Join(h.dataDir, "pt.img")
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	entry := []byte{0x00, 0, 0, 0, 0x83, 0, 0, 0, 0x00, 0x08, 0, 0, 0x00, 0x00, 0x01, 0}
	f.WriteAt(entry, 446)
	f.WriteAt([]byte{0x55, 0xAA}, 510)
	f.Close()
	before, _ := os.ReadFile(img)

	_, err = h.d.Mount(&volume.MountRequest{Name: "pt", ID: rid1})
	if err == nil || !strings.Contains(err.Error(), `volume "pt" cannot be mounted`) || !strings.Contains(err.Error(), "partition table") {
		t.Fatalf("Mount of a partitioned device = %v", err)
	}
	if !errors.Is(err, fs.ErrForeignSignature) {
		t.Fatalf("error does not wrap ErrForeignSignature: %v", err)
	}
	after, _ := os.ReadFile(img)
	if string(before[:1024]) != string(after[:1024]) {
		t.Fatal("the partition table was changed")
	}
	h.assertNothingLeft("pt")
}
