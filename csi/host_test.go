package csi_test

import (
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/backends/loop"
	"github.com/blockvol/blockvol/csi"
	"github.com/blockvol/blockvol/fs"
	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/internal/testenv"
	"github.com/blockvol/blockvol/internal/unixsock"
	"github.com/blockvol/blockvol/plugin"
	"github.com/blockvol/blockvol/volumes"
)

// testNodeID is the node id of the test hosts (a host UUID).
const testNodeID = "0b5c51b0-0000-4000-8000-00000000c51b"

// host is one blockvol process over the real loop backend and real
// filesystems, all of its directories under one temporary tree (prefix
// "bvcsi"): its core, its Docker door and its CSI door on a unix socket.
type host struct {
	t                            testing.TB
	root, state, data, mnt, sock string
	core                         *volumes.Core
	docker                       *plugin.Driver
	csi                          *csi.Server
	stop                         func()
}

func requireRootTools(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t)
	for _, tool := range []string{"losetup", "mkfs.ext4", "blkid", "wipefs"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Skip(t, tool+" not installed")
		}
	}
}

func newHost(t testing.TB) *host {
	t.Helper()
	requireRootTools(t)
	root, err := os.MkdirTemp("", "bvcsi-")
	if err != nil {
		t.Fatal(err)
	}
	h := &host{t: t, root: root, state: filepath.Join(root, "state"), data: filepath.Join(root, "loop"), mnt: filepath.Join(root, "mnt"), sock: filepath.Join(root, "csi.sock")}
	t.Cleanup(func() { h.cleanup() })
	h.start()
	return h
}

// start builds the process over the host's directories, as a restart after
// kill -9 would, runs recovery and serves CSI.
func (h *host) start() {
	h.t.Helper()
	log := slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	be, err := loop.New(loop.Config{DataDir: h.data}, hostexec.OS{}, log)
	if err != nil {
		h.t.Fatal(err)
	}
	mounts := &fs.FS{Run: hostexec.OS{}, Mounter: fs.SyscallMounter{}, Log: log}
	h.core, err = volumes.New(volumes.Config{
		Backends:       map[string]backends.Backend{"local": be},
		FS:             mounts,
		ParseMountOpts: fs.ParseMountOptions,
		StateDir:       h.state,
		MountDir:       h.mnt,
		Defaults:       volumes.OptionDefaults{Size: "64M", FSType: "ext4", Backend: "local"},
		CreateTimeout:  time.Minute,
		MountTimeout:   time.Minute,
		OtherTimeout:   time.Minute,
		Log:            log,
	})
	if err != nil {
		h.t.Fatal(err)
	}
	h.docker = plugin.New(h.core)
	h.csi, err = csi.New(csi.Config{Core: h.core, Mounts: mounts, NodeID: testNodeID, Log: log, ErrMountedDifferently: fs.ErrMountedDifferently})
	if err != nil {
		h.t.Fatal(err)
	}
	if err := h.core.Recover(h.t.Context()); err != nil {
		h.t.Fatal(err)
	}
	l, err := unixsock.Listen(h.sock, 0o600, 0)
	if err != nil {
		h.t.Fatal(err)
	}
	g := h.csi.NewGRPCServer()
	done := make(chan struct{})
	go func() { defer close(done); g.Serve(l) }()
	h.stop = func() { g.Stop(); <-done }
}

// kill ends the process as kill -9 would: it stops answering, and nothing
// is unmounted or detached.
func (h *host) kill() {
	h.stop()
	h.stop = func() {}
}

func (h *host) endpoint() string { return "unix://" + h.sock }

// cleanup unmounts and detaches whatever a failed test left behind, then
// removes the tree.
func (h *host) cleanup() {
	h.stop()
	if data, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		var mps []string
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Fields(line)
			if len(f) > 4 && strings.HasPrefix(f[4], h.root+"/") {
				mps = append(mps, f[4])
			}
		}
		for i := len(mps) - 1; i >= 0; i-- {
			exec.Command("umount", "-l", mps[i]).Run()
		}
	}
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err == nil && strings.HasPrefix(strings.TrimSpace(string(b)), h.data+"/") {
			exec.Command("losetup", "-d", "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(f)))).Run()
		}
	}
	os.RemoveAll(h.root)
}
