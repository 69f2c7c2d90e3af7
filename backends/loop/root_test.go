package loop

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/internal/testenv"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/hostexec"
)

// newRealBackend returns a Backend on real loop devices, skipping the test
// when that is impossible. Every loop device left backed by an image of
// the test's data directory is detached in t.Cleanup.
func newRealBackend(t *testing.T) *Backend {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Skip(t, "needs root for loop devices")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		testenv.Skip(t, "losetup not installed")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		testenv.Skip(t, "no /dev/loop-control")
	}
	b, err := New(Config{DataDir: t.TempDir()}, hostexec.OS{}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		loops, err := b.scanLoops()
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		for file, devs := range loops {
			if filepath.Dir(file) != b.dir {
				continue
			}
			for _, dev := range devs {
				if _, err := (hostexec.OS{}).Run(context.Background(), "losetup", "--detach", dev); err != nil {
					t.Errorf("cleanup: detach %s: %v", dev, err)
				}
			}
		}
	})
	return b
}

// waitDetachedFromSysfs polls sysfs until no loop device is backed by img.
func waitDetachedFromSysfs(t *testing.T, b *Backend, img string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		devs, err := b.devicesOf(img)
		if err != nil {
			t.Fatal(err)
		}
		if len(devs) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s still backs %v: %v", img, devs, ctx.Err())
		case <-tick.C:
		}
	}
}

func TestRealLoopLifecycle(t *testing.T) {
	b := newRealBackend(t)
	ctx := context.Background()
	const size = 64 * mib
	if _, err := b.Create(ctx, backends.CreateRequest{Name: "real", SizeBytes: size}); err != nil {
		t.Fatal(err)
	}
	img := b.imgPath("real")

	dev, err := b.Attach(ctx, "real", backends.AttachOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(dev, "/dev/loop") {
		t.Fatalf("Attach = %q, want /dev/loopN", dev)
	}
	data, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "size"))
	if err != nil {
		t.Fatal(err)
	}
	sectors, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	if sectors*512 != size {
		t.Errorf("%s is %d bytes per sysfs, want %d", dev, sectors*512, size)
	}
	if _, err := exec.LookPath("blockdev"); err == nil {
		out, err := (hostexec.OS{}).Run(ctx, "blockdev", "--getsize64", dev)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(out)); got != strconv.Itoa(size) {
			t.Errorf("blockdev --getsize64 %s = %s, want %d", dev, got, size)
		}
	}

	again, err := b.Attach(ctx, "real", backends.AttachOptions{})
	if err != nil || again != dev {
		t.Errorf("second Attach = %q, %v; want %q", again, err, dev)
	}
	v, err := b.Get(ctx, "real")
	if err != nil || v.Status["device"] != dev {
		t.Errorf("Get = %+v, %v; want device %s", v, err, dev)
	}
	if list, err := b.List(ctx); err != nil || len(list) != 1 || list[0].Status["device"] != dev {
		t.Errorf("List = %+v, %v", list, err)
	}

	b.removeGrace = 100 * time.Millisecond
	if err := b.Remove(ctx, "real"); !errors.Is(err, sentinel.ErrInUse) {
		t.Errorf("Remove while attached: %v, want ErrInUse", err)
	}

	if err := b.Detach(ctx, "real"); err != nil {
		t.Fatal(err)
	}
	waitDetachedFromSysfs(t, b, img)
	if err := b.Detach(ctx, "real"); err != nil {
		t.Errorf("second Detach: %v", err)
	}
	if err := b.Remove(ctx, "real"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(img); !os.IsNotExist(err) {
		t.Errorf("image still there: %v", err)
	}
	if _, err := os.Lstat(b.jsonPath("real")); !os.IsNotExist(err) {
		t.Errorf("record still there: %v", err)
	}
}

// TestRealLoopDetachWhileOpen: detaching a device someone still holds open
// only sets autoclear; the device goes when the holder closes it, and
// Remove waits for that within its grace.
func TestRealLoopDetachWhileOpen(t *testing.T) {
	b := newRealBackend(t)
	ctx := context.Background()
	if _, err := b.Create(ctx, backends.CreateRequest{Name: "held", SizeBytes: 4 * mib}); err != nil {
		t.Fatal(err)
	}
	dev, err := b.Attach(ctx, "held", backends.AttachOptions{})
	if err != nil {
		t.Fatal(err)
	}
	holder, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if err := b.Detach(ctx, "held"); err != nil {
		t.Fatal(err)
	}
	b.removeGrace = 100 * time.Millisecond
	if err := b.Remove(ctx, "held"); !errors.Is(err, sentinel.ErrInUse) {
		t.Fatalf("Remove while the device is held open: %v, want ErrInUse", err)
	}
	b.removeGrace = 10 * time.Second
	close := time.AfterFunc(50*time.Millisecond, func() { holder.Close() })
	defer close.Stop()
	if err := b.Remove(ctx, "held"); err != nil {
		t.Fatalf("Remove once the holder closes: %v", err)
	}
}

// A device bound through a bind mount of the data directory that no longer
// exists (a managed plugin's previous container; the kernel then names the
// file relative to that mount, "/<volume>.img") is still recognised as the
// volume's by its device and inode: reported attached, handed out again by
// Attach rather than a second device on the same image, and detached.
func TestRealLoopBoundThroughAGoneMount(t *testing.T) {
	b := newRealBackend(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		testenv.Skip(t, "unshare not installed")
	}
	ctx := context.Background()
	if _, err := b.Create(ctx, backends.CreateRequest{Name: "moved", SizeBytes: 4 * mib}); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	script := `mount --bind "$1" "$2" && losetup --find --show "$2/moved.img"`
	out, err := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", b.dir, other).CombinedOutput()
	if err != nil {
		t.Fatalf("attach through a bind mount in a namespace of its own: %v %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	if file, _, _ := readBackingFile(filepath.Join("/sys/block", filepath.Base(dev))); file != "/moved.img" {
		t.Fatalf("the kernel names the file of %s %q; the test expects the path relative to the gone mount", dev, file)
	}
	if names, err := b.AttachedHere(ctx); err != nil || len(names) != 1 || names[0] != "moved" {
		t.Fatalf("AttachedHere = %v, %v; want [moved]", names, err)
	}
	if got, err := b.Attach(ctx, "moved", backends.AttachOptions{}); err != nil || got != dev {
		t.Fatalf("Attach = %q, %v; want the device already bound, %s", got, err, dev)
	}
	if err := b.Detach(ctx, "moved"); err != nil {
		t.Fatal(err)
	}
	waitDetachedFromSysfs(t, b, b.imgPath("moved"))
	if _, ok, _ := readBackingFile(filepath.Join("/sys/block", filepath.Base(dev))); ok {
		t.Fatalf("%s still bound after Detach", dev)
	}
}
