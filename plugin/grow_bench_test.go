package plugin_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/volume"
)

// BenchmarkRootGrowOnline: `blockvol volume resize` of a mounted 10 GiB
// xfs volume by 1 GiB (backend extend, loop capacity, xfs_growfs), and the
// reference measured in the same run: the same three steps by hand on an
// image of the same size (truncate, losetup --set-capacity, xfs_growfs);
// and the ratio. (ext4 grows online only with CAP_SYS_RESOURCE, which
// this machine's containers lack.)
func BenchmarkRootGrowOnline(b *testing.B) {
	h := newRealHost(b)
	if err := h.d.Create(&volume.CreateRequest{Name: "bvsnap-grow", Options: map[string]string{"size": "10G", "fstype": "xfs"}}); err != nil {
		b.Fatal(err)
	}
	h.mount("bvsnap-grow", "b1")
	b.Cleanup(func() { h.unmount("bvsnap-grow", "b1") })
	ref := growByHand(b, b.N)
	size := int64(10 << 30)
	b.ResetTimer()
	t0 := time.Now()
	for range b.N {
		size += 1 << 30
		if err := h.core.Resize(b.Context(), "bvsnap-grow", size); err != nil {
			b.Fatal(err)
		}
	}
	took := time.Since(t0) / time.Duration(b.N)
	b.ReportMetric(ref.Seconds()*1000, "ms-by-hand")
	b.ReportMetric(float64(took)/float64(ref), "x-by-hand")
	b.Logf("resize: %v each; truncate + losetup --set-capacity + xfs_growfs by hand: %v; ratio %.2f", took.Round(time.Millisecond), ref.Round(time.Millisecond), float64(took)/float64(ref))
}

// growByHand grows a mounted 10 GiB xfs image n times by 1 GiB with the
// kernel's own commands and returns the mean time of one grow.
func growByHand(b *testing.B, n int) time.Duration {
	b.Helper()
	root := b.TempDir()
	img, mnt := filepath.Join(root, "bvsnap-hand.img"), filepath.Join(root, "mnt")
	run := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			b.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	run("truncate", "-s", "10G", img)
	run("mkfs.xfs", "-q", "-K", img)
	dev := run("losetup", "--find", "--show", img)
	b.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	if err := os.Mkdir(mnt, 0o755); err != nil {
		b.Fatal(err)
	}
	run("mount", dev, mnt)
	b.Cleanup(func() { exec.Command("umount", mnt).Run() })
	size := int64(10 << 30)
	t0 := time.Now()
	for range n {
		size += 1 << 30
		f, err := os.OpenFile(img, os.O_WRONLY, 0)
		if err == nil {
			err = f.Truncate(size)
			if err == nil {
				err = f.Sync()
			}
			f.Close()
		}
		if err != nil {
			b.Fatal(err)
		}
		run("losetup", "--set-capacity", dev)
		run("xfs_growfs", mnt)
	}
	return time.Since(t0) / time.Duration(n)
}
