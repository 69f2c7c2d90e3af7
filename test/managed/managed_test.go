package managed

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/blockvol/blockvol/internal/testenv"
)

// TestManagedPlugin is what an operator does with the managed plugin, in
// order: create from the directory `make plugin` assembles, set, enable,
// create a volume with options, write and read from containers; then the
// events that must not lose a byte: a disable refused while a container
// uses the volume, dockerd restarts with a container running on the volume
// (with live-restore, then without), the plugin restarted under a running
// container, disable/enable, `docker plugin
// upgrade`, and remove + create again.
func TestManagedPlugin(t *testing.T) {
	testenv.RequireLong(t, "dockerd")
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "dockerd", "containerd", "unshare", "nsenter", "busybox", "mkfs.xfs", "mkfs.ext4",
		"iscsiadm", "docker-registry", "go")

	root, err := os.MkdirTemp("/var/tmp", "bvmp-")
	if err != nil {
		t.Fatal(err)
	}
	runID := strings.TrimPrefix(filepath.Base(root), "bvmp-")
	h := startHolder(t)
	d := newDaemon(t, h, root)
	t.Cleanup(func() { cleanUp(t, d, h, root) })
	d.start(t, true)
	reg := startRegistry(t, root)
	t.Cleanup(reg.stop)
	img := "bvmp/busybox:" + runID
	d.importBusybox(t, img)

	// Two versions of the plugin: v2 goes through the registry, the only
	// source `docker plugin upgrade` takes.
	ref := reg.addr + "/bvmp-" + strings.ToLower(runID)
	v1, v2 := ref+":v1", ref+":v2"
	d.must(t, "plugin", "create", v2, buildPlugin(t, root, "bvmp-v2"))
	d.must(t, "plugin", "push", v2)
	d.must(t, "plugin", "rm", v2)
	dir1 := buildPlugin(t, root, "bvmp-v1")
	state := filepath.Join(root, "state")
	iscsi := filepath.Join(root, "iscsi")
	for _, dir := range []string{state, iscsi} {
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	settings := []string{"state.source=" + state, "iscsi.source=" + iscsi, "LOG_LEVEL=debug"}
	install := func() {
		d.must(t, "plugin", "create", v1, dir1)
		d.must(t, append([]string{"plugin", "set", v1}, settings...)...)
		d.enable(t, v1)
	}
	install()

	vol := "bvmp-" + runID
	inContainer := func(t *testing.T, script string) string {
		t.Helper()
		return d.must(t, "run", "--rm", "--network", "none", "-v", vol+":/data", img, "/bin/busybox", "sh", "-c", script)
	}
	read := func(t *testing.T, want string) {
		t.Helper()
		if got := inContainer(t, "/bin/busybox cat /data/f"); got != want {
			t.Fatalf("the volume holds %q; want %q", got, want)
		}
	}
	var cid string // a container that keeps the volume in use

	t.Run("create and use", func(t *testing.T) {
		d.must(t, "volume", "create", "-d", v1, "-o", "size=512M", "-o", "fstype=xfs", vol)
		if got := inContainer(t, "/bin/busybox stat -f -c %T /data; echo one > /data/f; /bin/busybox sync"); got != "xfs" {
			t.Fatalf("filesystem type %q; want xfs", got)
		}
		read(t, "one")
	})
	t.Run("disable refused while in use", func(t *testing.T) {
		cid = d.must(t, "run", "-d", "--restart", "always", "--network", "none", "-v", vol+":/data", img,
			"/bin/busybox", "sleep", "3600")
		out, err := d.try(t, "plugin", "disable", v1)
		if err == nil || !strings.Contains(out, "in use") {
			t.Fatalf("disable while a container uses the volume: %v; want Docker to refuse it as in use", err)
		}
		if !mounted(t, h, vol) {
			t.Fatal("after the refused disable the volume is no longer mounted")
		}
		d.must(t, "exec", cid, "/bin/busybox", "sh", "-c", "echo two > /data/f")
		read(t, "two")
	})
	image := filepath.Join(state, "loop", vol+".img")
	t.Run("dockerd restart with live-restore", func(t *testing.T) {
		d.stop(t) // live-restore: the container and the plugin keep running
		d.start(t, true)
		if got := d.must(t, "inspect", "-f", "{{.State.Running}} {{.State.StartedAt}}", cid); !strings.HasPrefix(got, "true ") {
			t.Fatalf("container state %s; live-restore should have kept it running", got)
		}
		if got := d.must(t, "exec", cid, "/bin/busybox", "cat", "/data/f"); got != "two" {
			t.Fatalf("the container reads %q; want two", got)
		}
		d.must(t, "exec", cid, "/bin/busybox", "sh", "-c", "echo three > /data/f")
		read(t, "three")
		requireLoops(t, image, 1)
	})
	t.Run("dockerd restart without live-restore", func(t *testing.T) {
		// Switch live-restore off with nothing running (a daemon coming up
		// without it restarts the plugin under running containers).
		d.must(t, "rm", "-f", cid)
		requireLoops(t, image, 0)
		d.stop(t)
		d.start(t, false)
		cid = d.must(t, "run", "-d", "--restart", "always", "--network", "none", "-v", vol+":/data", img,
			"/bin/busybox", "sleep", "3600")
		requireLoops(t, image, 1)
		d.stop(t) // stops the container, then the plugin
		requireLoops(t, image, 0)
		d.start(t, false)
		waitRunning(t, d, cid) // it mounts the volume again
		if got := d.must(t, "exec", cid, "/bin/busybox", "cat", "/data/f"); got != "three" {
			t.Fatalf("after the restart the volume holds %q; want three", got)
		}
		d.must(t, "exec", cid, "/bin/busybox", "sh", "-c", "echo four > /data/f")
		requireLoops(t, image, 1)
		d.must(t, "rm", "-f", cid)
		if mounted(t, h, vol) {
			t.Fatal("the volume is still mounted after its last container was removed")
		}
		requireLoops(t, image, 0)
	})
	t.Run("plugin restarted under a running container", func(t *testing.T) {
		// Docker unmounts a managed plugin's propagated mounts when it
		// stops it: after `disable -f` and `enable` under a container that
		// still runs on the volume, the new plugin does not see the mount,
		// only its device still in use. It keeps the volume for the
		// container, and a second container gets that same filesystem (the
		// container's unsynced write), never a second loop device on the
		// image; the last release detaches it.
		cid = d.must(t, "run", "-d", "--restart", "always", "--network", "none", "-v", vol+":/data", img,
			"/bin/busybox", "sleep", "3600")
		d.must(t, "exec", cid, "/bin/busybox", "sh", "-c", "echo five > /data/f")
		requireLoops(t, image, 1)
		d.must(t, "plugin", "disable", "-f", v1)
		d.enable(t, v1)
		if got := d.must(t, "exec", cid, "/bin/busybox", "cat", "/data/f"); got != "five" {
			t.Fatalf("after the plugin's restart the container reads %q; want five", got)
		}
		read(t, "five")
		requireLoops(t, image, 1)
		d.must(t, "exec", cid, "/bin/busybox", "sh", "-c", "echo six > /data/f")
		read(t, "six")
		requireLoops(t, image, 1)
	})
	t.Run("plugin killed", func(t *testing.T) {
		// kill -9 of the plugin's process: Docker starts it again; the
		// container goes on with its data and its mount is kept.
		old := pluginPID(t, h)
		if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitRestarted(t, d, h, old)
		if got := d.must(t, "exec", cid, "/bin/busybox", "cat", "/data/f"); got != "six" {
			t.Fatalf("after kill -9 of the plugin the container reads %q; want six", got)
		}
		d.must(t, "exec", cid, "/bin/busybox", "sh", "-c", "echo seven > /data/f")
		read(t, "seven")
		requireLoops(t, image, 1)
		d.must(t, "rm", "-f", cid)
		if mounted(t, h, vol) {
			t.Fatal("the volume is still mounted after its last container was removed")
		}
		requireLoops(t, image, 0)
	})
	t.Run("disable and enable", func(t *testing.T) {
		// Docker counts an existing volume as a use of its plugin: only
		// -f disables a plugin with volumes, none of them mounted here.
		if out, err := d.try(t, "plugin", "disable", v1); err == nil || !strings.Contains(out, "in use") {
			t.Fatalf("disable with a volume: %v; want Docker to refuse it as in use", err)
		}
		d.must(t, "plugin", "disable", "-f", v1)
		d.enable(t, v1)
		read(t, "seven")
	})
	t.Run("upgrade", func(t *testing.T) {
		d.must(t, "plugin", "disable", "-f", v1)
		// The CLI asks whether to upgrade v1 to an image of another tag.
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if _, err := d.dockerIn(ctx, "y\n", "plugin", "upgrade", "--grant-all-permissions", v1, v2); err != nil {
			t.Fatal(err)
		}
		// Docker 20.10 starts the upgraded plugin with the new config.json's
		// mount sources although `docker plugin inspect` still shows the
		// settings (docs/managed-plugin.md): set them again before enabling.
		d.must(t, append([]string{"plugin", "set", v1}, settings...)...)
		d.enable(t, v1)
		read(t, "seven")
		// Only the upgraded plugin ever ran version bvmp-v2.
		if b, err := os.ReadFile(d.log); err != nil || !strings.Contains(string(b), "version=bvmp-v2") {
			t.Fatalf("no start of version bvmp-v2 in dockerd's log (%v):\n%s", err, d.logTail())
		}
	})
	t.Run("remove and install again", func(t *testing.T) {
		d.must(t, "plugin", "disable", "-f", v1)
		d.must(t, "plugin", "rm", "-f", v1)
		install()
		read(t, "seven")
		d.must(t, "volume", "rm", vol)
		if out := d.must(t, "volume", "ls", "-q"); out != "" {
			t.Fatalf("volumes left after rm: %s", out)
		}
	})
}

// buildPlugin assembles the plugin directory of one version.
func buildPlugin(t *testing.T, root, version string) string {
	t.Helper()
	repo := repoRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := filepath.Join(root, version, "blockvol")
	env := childEnv("CGO_ENABLED=0")
	if _, err := run(ctx, env, "go", "build", "-C", repo, "-trimpath", "-ldflags", "-X main.version="+version,
		"-o", bin, "./cmd/blockvol"); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, version, "plugin")
	if _, err := run(ctx, env, filepath.Join(repo, "docker-plugin", "build.sh"), bin, dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// mounted reports whether the namespace has a filesystem mounted for vol.
func mounted(t *testing.T, h *holder, vol string) bool {
	t.Helper()
	for _, l := range strings.Split(h.mountinfo(t), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasSuffix(f[4], "/propagated-mount/"+vol) {
			return true
		}
	}
	return false
}

// waitRunning waits until Docker reports the container running.
func waitRunning(t *testing.T, d *daemon, cid string) {
	t.Helper()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(2 * time.Minute)
	for {
		if out, err := d.try(t, "inspect", "-f", "{{.State.Running}}", cid); err == nil && strings.TrimSpace(out) == "true" {
			return
		}
		select {
		case <-deadline:
			t.Fatalf("container %s not running 2 minutes after dockerd started\n%s", cid, d.logTail())
		case <-tick.C:
		}
	}
}

// cleanUp removes what the test made: containers and volumes through
// Docker, dockerd (without live-restore it stops the plugin), the
// namespace, then the loop devices backed by the test's state directory
// and the directories.
func cleanUp(t *testing.T, d *daemon, h *holder, root string) {
	if d.cmd != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		if out, err := d.docker(ctx, "ps", "-aq"); err == nil && strings.TrimSpace(out) != "" {
			_, _ = d.docker(ctx, append([]string{"rm", "-f"}, strings.Fields(out)...)...)
		}
		if out, err := d.docker(ctx, "volume", "ls", "-q"); err == nil {
			for _, v := range strings.Fields(out) {
				_, _ = d.docker(ctx, "volume", "rm", "-f", v)
			}
		}
		cancel()
		d.stop(t)
	}
	killNamespace(h)
	h.stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The loop devices' backing paths are the plugin's (/var/lib/blockvol/...):
	// match them by device and inode of the test's images instead.
	ours := map[string]bool{}
	images, _ := filepath.Glob(filepath.Join(root, "state", "loop", "*"))
	for _, img := range images {
		var st syscall.Stat_t
		if syscall.Stat(img, &st) == nil {
			ours[fmt.Sprintf("%d %d:%d", st.Ino, unix.Major(st.Dev), unix.Minor(st.Dev))] = true
		}
	}
	if out, err := run(ctx, childEnv(), "losetup", "--list", "--noheadings", "--output", "NAME,BACK-INO,BACK-MAJ:MIN"); err == nil {
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) == 3 && ours[f[1]+" "+f[2]] {
				t.Errorf("loop device %s still attached to an image of the test; detaching it", f[0])
				if _, err := run(ctx, childEnv(), "losetup", "--detach", f[0]); err != nil {
					t.Errorf("cleanup: %v", err)
				}
			}
		}
	}
	_ = os.RemoveAll(d.exec)
	if t.Failed() {
		t.Logf("kept %s (dockerd.log) for inspection", root)
		return
	}
	if err := os.RemoveAll(root); err != nil {
		t.Errorf("cleanup: %v", err)
	}
}

// killNamespace SIGKILLs every process left in the holder's mount namespace
// (containers, shims, the plugin after a failed step): all of them are the
// test's.
func killNamespace(h *holder) {
	self := fmt.Sprintf("/proc/%d/ns/mnt", h.pid())
	ns, err := os.Readlink(self)
	if err != nil {
		return
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == h.pid() {
			continue
		}
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err == nil && l == ns {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// requireLoops fails unless exactly n loop devices are attached to image
// (matched by inode: the plugin sees its own paths).
func requireLoops(t *testing.T, image string, n int) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(image, &st); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := run(ctx, childEnv(), "losetup", "--list", "--noheadings", "--output", "NAME,BACK-INO,BACK-MAJ:MIN")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%d %d:%d", st.Ino, unix.Major(st.Dev), unix.Minor(st.Dev))
	var devs []string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[1]+" "+f[2] == want {
			devs = append(devs, f[0])
		}
	}
	if len(devs) != n {
		t.Fatalf("loop devices attached to the volume's image: %v; want %d", devs, n)
	}
}

// pluginPIDs returns the pids of the test's plugin processes: blockvol
// serve --managed in a mount namespace of its own whose parent, the shim,
// is in the test's namespace (another run's plugins are not).
func pluginPIDs(h *holder) []int {
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", h.pid()))
	if err != nil {
		return nil
	}
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !strings.HasPrefix(string(cmd), "/usr/bin/blockvol\x00serve\x00--managed") {
			continue
		}
		if parentNS(pid) == ns {
			pids = append(pids, pid)
		}
	}
	return pids
}

// parentNS returns the mount namespace of pid's parent.
func parentNS(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// pid (comm) state ppid ...
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 2 {
		return ""
	}
	l, _ := os.Readlink("/proc/" + f[1] + "/ns/mnt")
	return l
}

func pluginPID(t *testing.T, h *holder) int {
	t.Helper()
	pids := pluginPIDs(h)
	if len(pids) != 1 {
		t.Fatalf("plugin processes of the test: %v; want one", pids)
	}
	return pids[0]
}

// waitRestarted waits until Docker has started the plugin again after its
// process old died, and the plugin answers.
func waitRestarted(t *testing.T, d *daemon, h *holder, old int) {
	t.Helper()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(2 * time.Minute)
	for {
		if pids := pluginPIDs(h); len(pids) == 1 && pids[0] != old {
			if _, err := d.try(t, "volume", "inspect", "bvmp-"+strings.TrimPrefix(filepath.Base(d.root), "bvmp-")); err == nil {
				return
			}
		}
		select {
		case <-deadline:
			t.Fatalf("the plugin was not started again within 2 minutes of its kill\n%s", d.logTail())
		case <-tick.C:
		}
	}
}
