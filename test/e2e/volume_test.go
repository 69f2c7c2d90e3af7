package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const gib = 1 << 30

// createVolume runs `docker volume create -d <plugin> -o opt... name` and
// removes the volume at the end of the test (cleanups run in reverse, so
// containers started later are gone by then).
func createVolume(t testing.TB, p *Plugin, name string, opts ...string) string {
	t.Helper()
	args := []string{"volume", "create", "-d", p.Config.Name}
	for _, o := range opts {
		args = append(args, "-o", o)
	}
	mustDocker(t, append(args, name)...)
	t.Cleanup(func() { _, _ = docker(t, "volume", "rm", "-f", name) })
	return name
}

// requireReleased waits (briefly: Docker unmounts as the container is
// cleaned up) until the plugin holds no mount and no loop device.
func requireReleased(t testing.TB, p *Plugin) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	err := poll(ctx, 100*time.Millisecond, nil, func(context.Context) (bool, error) {
		return holdsNothing(p)
	})
	if err != nil {
		t.Fatalf("plugin %s still holds host resources: %v", p.Config.Name, err)
	}
}

// holdsNothing reports whether no mount under the plugin's mount dir and no
// loop device on an image of its data dir remain.
func holdsNothing(p *Plugin) (bool, error) {
	mounts, err := mountsUnder(p.EffectiveMountDir())
	if err != nil {
		return false, err
	}
	loops, err := loopsBackedUnder(p.Config.DataDir)
	if err != nil {
		return false, err
	}
	var devs []string
	for _, l := range loops {
		devs = append(devs, l.Dev)
	}
	elsewhere, err := mountsOfSources(devs)
	if err != nil {
		return false, err
	}
	if len(mounts)+len(loops)+len(elsewhere) == 0 {
		return true, nil
	}
	return false, fmt.Errorf("mounts %v, loop devices %v, mounts of them %v", mounts, loops, elsewhere)
}

// mountedVolumes counts the mounts under the plugin's mount dir.
func mountedVolumes(t testing.TB, p *Plugin) int {
	t.Helper()
	m, err := mountsUnder(p.EffectiveMountDir())
	if err != nil {
		t.Fatal(err)
	}
	return len(m)
}

// TestFreshVolumeFilesystem: a fresh volume shows the requested filesystem
// and size inside a container, is empty (no lost+found), and is mounted
// nosuid,nodev.
func TestFreshVolumeFilesystem(t *testing.T) {
	requireDocker(t)
	p := startPlugin(t, PluginConfig{})
	cases := []struct {
		name     string
		opts     []string
		fstype   string
		statType string // busybox stat -f %T
	}{
		{"xfs", []string{"size=1", "fstype=xfs"}, "xfs", "xfs"},
		{"ext4", []string{"size=1", "fstype=ext4"}, "ext4", "ext2/ext3"},
		{"defaults", nil, "ext4", "ext2/ext3"}, // config: 1G ext4
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			vol := createVolume(t, p, uniqueName(t), tc.opts...)
			f := inspectFS(t, vol)
			if f.FSType != tc.fstype || f.StatType != tc.statType {
				t.Errorf("container sees %s (stat -f %q), want %s (%q)", f.FSType, f.StatType, tc.fstype, tc.statType)
			}
			if f.SizeBytes < gib*85/100 || f.SizeBytes > gib {
				t.Errorf("df shows %d KiB, want close to 1 GiB (%d KiB)", f.SizeBytes/1024, gib/1024)
			}
			if len(f.Entries) != 0 {
				t.Errorf("fresh volume is not empty: %v", f.Entries)
			}
			for _, o := range []string{"nosuid", "nodev"} {
				if !hasOption(f.Options, o) {
					t.Errorf("mount options %q lack %s", f.Options, o)
				}
			}
			requireReleased(t, p)
		})
	}
}

// TestDataPersistsAcrossContainers: what one container writes, a later one
// reads back intact; between them the volume is not mounted.
func TestDataPersistsAcrossContainers(t *testing.T) {
	requireDocker(t)
	p := startPlugin(t, PluginConfig{})
	vol := createVolume(t, p, uniqueName(t), "size=1")

	write := `set -e
dd if=/dev/urandom of=/data/blob bs=64k count=32 2>/dev/null
md5sum /data/blob > /data/blob.md5
mkdir /data/dir
echo persisted > /data/dir/note
sync`
	if _, err := runContainer(t, "--rm", "-v", vol+":/data", env.image, "sh", "-c", write); err != nil {
		t.Fatal(err)
	}
	requireReleased(t, p)

	out, err := runContainer(t, "--rm", "-v", vol+":/data", env.image, "sh", "-c",
		`set -e; md5sum -c /data/blob.md5; cat /data/dir/note; stat -c %s /data/blob`)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"/data/blob: OK", "persisted", "2097152"} {
		if !strings.Contains(out, want) {
			t.Errorf("second container read %q, want it to contain %q", out, want)
		}
	}
	requireReleased(t, p)
}

// TestTwoContainersShareVolume: two running containers use one volume;
// stopping one leaves the other reading and writing.
func TestTwoContainersShareVolume(t *testing.T) {
	requireDocker(t)
	p := startPlugin(t, PluginConfig{})
	vol := createVolume(t, p, uniqueName(t), "size=1")

	c1 := startContainer(t, vol, idleScript)
	c2 := startContainer(t, vol, idleScript)
	mustDocker(t, "exec", c1, "sh", "-c", "echo from-c1 > /data/shared")
	if out := mustDocker(t, "exec", c2, "cat", "/data/shared"); strings.TrimSpace(out) != "from-c1" {
		t.Fatalf("c2 read %q, want from-c1", out)
	}
	if n := mountedVolumes(t, p); n != 1 {
		t.Errorf("%d mounts under the mount dir with two users, want 1", n)
	}

	mustDocker(t, "stop", "-t", "10", c1)
	if state := strings.TrimSpace(mustDocker(t, "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", c1)); state != "exited 0" {
		t.Errorf("c1 after stop: %q, want exited 0", state)
	}
	out := mustDocker(t, "exec", c2, "sh", "-c", "echo from-c2 >> /data/shared && sync && cat /data/shared")
	if got := strings.Fields(out); len(got) != 2 || got[0] != "from-c1" || got[1] != "from-c2" {
		t.Fatalf("c2 after c1 stopped read %q, want from-c1 then from-c2", out)
	}
	if n := mountedVolumes(t, p); n != 1 {
		t.Errorf("%d mounts under the mount dir after one of two users stopped, want 1", n)
	}

	mustDocker(t, "stop", "-t", "10", c2)
	requireReleased(t, p)
}

// volumeInspect is the part of `docker volume inspect` a user reads.
type volumeInspect struct {
	Name       string
	Driver     string
	Mountpoint string
	CreatedAt  string
	Scope      string
	Status     map[string]any
}

func inspectVolume(t testing.TB, vol string) volumeInspect {
	t.Helper()
	out := mustDocker(t, "volume", "inspect", vol)
	var vs []volumeInspect
	if err := json.Unmarshal([]byte(out), &vs); err != nil || len(vs) != 1 {
		t.Fatalf("docker volume inspect %s: %v\n%s", vol, err, out)
	}
	return vs[0]
}

// listed reports whether `docker volume ls` shows vol with driver.
func listed(t testing.TB, driver, vol string) bool {
	t.Helper()
	out := mustDocker(t, "volume", "ls", "--format", "{{.Driver}} {{.Name}}")
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) == driver+" "+vol {
			return true
		}
	}
	return false
}

// imagesOfSize lists the files of data_dir exactly size bytes long: the
// sparse images of volumes of that size.
func imagesOfSize(t testing.TB, dir string, size int64) []string {
	t.Helper()
	files, err := regularFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil && fi.Size() == size {
			out = append(out, f)
		}
	}
	return out
}

// TestVolumeListInspectRemove: ls and inspect show the volume and its
// driver; rm refuses while a stopped container still references it, then
// succeeds and deletes the image.
func TestVolumeListInspectRemove(t *testing.T) {
	requireDocker(t)
	p := startPlugin(t, PluginConfig{})
	vol := createVolume(t, p, uniqueName(t), "size=1", "fstype=xfs")

	if !listed(t, p.Config.Name, vol) {
		t.Errorf("docker volume ls does not list %s with driver %s", vol, p.Config.Name)
	}
	v := inspectVolume(t, vol)
	t.Logf("inspect (idle): %+v", v)
	if v.Driver != p.Config.Name || v.Name != vol {
		t.Errorf("inspect shows driver %q name %q, want %q %q", v.Driver, v.Name, p.Config.Name, vol)
	}
	if v.Scope != "local" {
		t.Errorf("inspect shows scope %q, want local for the loop backend", v.Scope)
	}
	if len(v.Status) == 0 {
		t.Errorf("inspect shows no Status")
	}
	if _, err := time.Parse(time.RFC3339, v.CreatedAt); err != nil {
		t.Errorf("inspect CreatedAt %q: %v", v.CreatedAt, err)
	}
	images := imagesOfSize(t, p.Config.DataDir, gib)
	if len(images) != 1 {
		t.Fatalf("data_dir holds %d images of 1 GiB (%v), want 1", len(images), images)
	}

	// While a container runs, inspect shows where the volume is mounted.
	c := startContainer(t, vol, idleScript)
	v = inspectVolume(t, vol)
	t.Logf("inspect (in use): %+v", v)
	if !isUnder(v.Mountpoint, p.EffectiveMountDir()) {
		t.Errorf("Mountpoint %q while in use, want a path under %s", v.Mountpoint, p.EffectiveMountDir())
	}
	if mountedVolumes(t, p) != 1 {
		t.Errorf("no mount under %s while in use", p.EffectiveMountDir())
	}
	mustDocker(t, "stop", "-t", "10", c)
	requireReleased(t, p)

	// The stopped container still references the volume.
	_, err := docker(t, "volume", "rm", vol)
	if err == nil {
		t.Fatal("docker volume rm of a volume referenced by a stopped container succeeded")
	}
	msg := stderrOf(err)
	t.Logf("rm while referenced: %s", msg)
	if !strings.Contains(msg, "in use") || !strings.Contains(msg, c[:12]) {
		t.Errorf("rm error %q does not say the volume is in use by %s", msg, c[:12])
	}
	if len(imagesOfSize(t, p.Config.DataDir, gib)) != 1 {
		t.Errorf("image gone after a refused rm")
	}

	mustDocker(t, "rm", c)
	mustDocker(t, "volume", "rm", vol)
	if listed(t, p.Config.Name, vol) {
		t.Errorf("docker volume ls still lists %s after rm", vol)
	}
	if _, err := docker(t, "volume", "inspect", vol); err == nil || !strings.Contains(strings.ToLower(stderrOf(err)), "no such volume") {
		t.Errorf("inspect after rm: %v, want no such volume", err)
	}
	for _, img := range images {
		if _, err := os.Stat(img); !isNotExist(err) {
			t.Errorf("image %s still there after rm (%v)", img, err)
		}
	}
	requireReleased(t, p)
}

// lineCount returns how many lines the writer loop has written so far.
func lineCount(t testing.TB, container string) int {
	t.Helper()
	out := mustDocker(t, "exec", container, "sh", "-c", "wc -l < /data/log")
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("wc -l: %q: %v", out, err)
	}
	return n
}

// waitLines waits until the writer has written more than after lines.
func waitLines(t testing.TB, container string, after int) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var n int
	err := poll(ctx, 200*time.Millisecond, nil, func(context.Context) (bool, error) {
		n = lineCount(t, container)
		return n > after, nil
	})
	if err != nil {
		t.Fatalf("the container's writes stalled at %d lines: %v", n, err)
	}
	return n
}

// TestPluginKill9WhileContainerWrites: killing the plugin does not disturb a
// running container; the restarted plugin takes over the mount, unmounts
// it when the container stops and leaves nothing behind.
func TestPluginKill9WhileContainerWrites(t *testing.T) {
	requireDocker(t)
	p := startPlugin(t, PluginConfig{})
	vol := createVolume(t, p, uniqueName(t), "size=1")

	c := startContainer(t, vol, `trap "exit 0" TERM
i=0
while :; do i=$((i+1)); echo $i >> /data/log; sleep 0.1; done`)
	n := waitLines(t, c, 3)

	oldPID := p.PID()
	p.Kill9(t)
	n = waitLines(t, c, n) // the mount does not depend on the plugin process
	t.Logf("plugin pid %d killed; the container wrote on to %d lines", oldPID, n)

	p.Restart(t)
	t.Logf("plugin restarted as pid %d", p.PID())
	n = waitLines(t, c, n)
	if out := mustDocker(t, "exec", c, "sh", "-c", "echo after-restart > /data/after && sync && cat /data/after"); strings.TrimSpace(out) != "after-restart" {
		t.Errorf("exec after restart read %q", out)
	}
	v := inspectVolume(t, vol)
	if !isUnder(v.Mountpoint, p.EffectiveMountDir()) {
		t.Errorf("after restart inspect shows Mountpoint %q, want the recovered mount under %s", v.Mountpoint, p.EffectiveMountDir())
	}

	mustDocker(t, "stop", "-t", "10", c)
	if state := strings.TrimSpace(mustDocker(t, "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", c)); state != "exited 0" {
		t.Errorf("container after stop: %q, want exited 0", state)
	}
	mustDocker(t, "rm", c)
	requireReleased(t, p)

	// The data survived, and the volume mounts again.
	out, err := runContainer(t, "--rm", "-v", vol+":/data", env.image, "sh", "-c", "wc -l < /data/log; cat /data/after")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out)
	if len(f) != 2 || f[1] != "after-restart" {
		t.Fatalf("new container read %q", out)
	}
	if got, _ := strconv.Atoi(f[0]); got < n {
		t.Errorf("new container sees %d lines, want at least %d", got, n)
	}
	requireReleased(t, p)
	mustDocker(t, "volume", "rm", vol)
}

// TestBadOptionsRejected: invalid options fail `docker volume create` with
// a message naming the culprit, and leave nothing behind.
func TestBadOptionsRejected(t *testing.T) {
	requireDocker(t)
	p := startPlugin(t, PluginConfig{})
	cases := []struct {
		name string
		opts []string
		want string
	}{
		{"size-zero", []string{"size=0"}, "size"},
		{"size-garbage", []string{"size=lots"}, "size"},
		{"fstype-btrfs", []string{"fstype=btrfs"}, "fstype"},
		{"unknown-option", []string{"colour=blue"}, "colour"},
		{"xfs-too-small", []string{"size=256M", "fstype=xfs"}, "size"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			vol := uniqueName(t)
			args := []string{"volume", "create", "-d", p.Config.Name}
			for _, o := range tc.opts {
				args = append(args, "-o", o)
			}
			_, err := docker(t, append(args, vol)...)
			if err == nil {
				_, _ = docker(t, "volume", "rm", "-f", vol)
				t.Fatalf("docker volume create -o %s succeeded", strings.Join(tc.opts, " -o "))
			}
			msg := stderrOf(err)
			t.Logf("-o %s: %s", strings.Join(tc.opts, " -o "), msg)
			if !strings.Contains(strings.ToLower(msg), tc.want) {
				t.Errorf("error %q does not name %s", msg, tc.want)
			}
			if _, err := docker(t, "volume", "inspect", vol); err == nil {
				t.Errorf("volume %s exists after a failed create", vol)
			}
		})
	}
	files, err := regularFiles(p.Config.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 0 {
		t.Errorf("data_dir holds %v after failed creates", files)
	}
	out := mustDocker(t, "volume", "ls", "-q", "--filter", "driver="+p.Config.Name)
	if strings.TrimSpace(out) != "" {
		t.Errorf("docker volume ls lists %q after failed creates", out)
	}
	requireReleased(t, p)
}

// TestPluginStopsCleanly: SIGTERM ends a plugin with no call in progress
// (one half-sent request) at once, with status 0, and
// removes its socket (a socket left behind stalls Docker ~15 s per call).
// The plugin listens on a private socket that dockerd never scans, so
// stopping it cannot stall the other tests.
func TestPluginStopsCleanly(t *testing.T) {
	requireDocker(t)
	sock := filepath.Join(env.root, fmt.Sprintf("stop-%d.sock", time.Now().UnixNano()%1e6))
	p := startPlugin(t, PluginConfig{Socket: sock})
	// A client that sends half a request must not hold the stopping
	// plugin: only calls in progress get the shutdown grace.
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("POST /VolumeDriver.Create HTTP/1.1\r\nHost: p\r\nContent-Length: 100\r\n\r\n{\"Name\":")); err != nil {
		t.Fatal(err)
	}
	// The plugin has read it once it answers a call made after it.
	pluginOK(t, p, "VolumeDriver.List", "{}")
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(sock); !isNotExist(err) {
		t.Errorf("socket %s left behind after SIGTERM (%v)", sock, err)
	}
}
