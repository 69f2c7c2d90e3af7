package loop

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/internal/testenv"
)

// BenchmarkRootSnapshot10G: a snapshot and a clone of a 10 GiB volume
// holding 1 GiB of data (16 extents of 64 MiB spread over it), with the
// data directory on this machine's temporary filesystem (no reflink here:
// a sparse copy) and on an xfs with reflink (an image mounted on a loop
// device in the benchmark's own directory). Each prints the reference
// measured in the same run: cp --reflink=always, or cp --sparse=always,
// of the same image, by hand; and the ratio.
func BenchmarkRootSnapshot10G(b *testing.B) {
	testenv.RequireRoot(b)
	testenv.RequireTools(b, "losetup", "mkfs.xfs", "cp")
	for _, kind := range []string{"default", "xfs-reflink"} {
		b.Run(kind, func(b *testing.B) {
			dir := b.TempDir()
			if kind == "xfs-reflink" {
				dir = xfsReflinkDir(b)
			}
			be, err := New(Config{DataDir: dir}, hostexec.OS{}, nil)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			const vol = "bvsnap-bench"
			if _, err := be.Create(ctx, backends.CreateRequest{Name: vol, SizeBytes: 10 << 30}); err != nil {
				b.Fatal(err)
			}
			fillSpread(b, be.imgPath(vol), 10<<30, 1<<30)
			cpArg := map[string]string{copyReflink: "--reflink=always", copySparse: "--sparse=always"}[be.copies]
			ref := timeCp(b, cpArg, be.imgPath(vol), filepath.Join(dir, "bvsnap-ref.copy"))

			b.Run("snapshot", func(b *testing.B) {
				var took time.Duration
				for i := range b.N {
					name := fmt.Sprintf("bvsnap-s%d", i)
					t0 := time.Now()
					if _, err := be.CreateSnapshot(ctx, vol, name); err != nil {
						b.Fatal(err)
					}
					took += time.Since(t0)
					b.StopTimer()
					if err := be.RemoveSnapshot(ctx, name); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
				report(b, be.copies, took/time.Duration(b.N), ref, cpArg)
			})
			if _, err := be.CreateSnapshot(ctx, vol, "bvsnap-src"); err != nil {
				b.Fatal(err)
			}
			b.Run("clone", func(b *testing.B) {
				var took time.Duration
				for i := range b.N {
					name := fmt.Sprintf("bvsnap-c%d", i)
					t0 := time.Now()
					if _, err := be.CreateFrom(ctx, backends.CreateRequest{Name: name, SizeBytes: 10 << 30}, backends.Source{Snapshot: "bvsnap-src"}); err != nil {
						b.Fatal(err)
					}
					took += time.Since(t0)
					b.StopTimer()
					if err := be.Remove(ctx, name); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
				report(b, be.copies, took/time.Duration(b.N), ref, cpArg)
			})
		})
	}
}

func report(b *testing.B, how string, took, ref time.Duration, cpArg string) {
	b.ReportMetric(ref.Seconds()*1000, "ms-cp-by-hand")
	b.ReportMetric(float64(took)/float64(ref), "x-cp")
	b.Logf("%s: %v each; cp %s by hand: %v; ratio %.2f", how, took.Round(time.Millisecond), cpArg, ref.Round(time.Millisecond), float64(took)/float64(ref))
}

// timeCp times `cp ARG src dst` (then fsync of dst, as the backend
// does) and removes dst.
func timeCp(b *testing.B, arg, src, dst string) time.Duration {
	b.Helper()
	t0 := time.Now()
	if out, err := exec.Command("cp", arg, src, dst).CombinedOutput(); err != nil {
		b.Fatalf("cp %s: %v\n%s", arg, err, out)
	}
	f, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err == nil {
		err = f.Sync()
		f.Close()
	}
	took := time.Since(t0)
	if err != nil {
		b.Fatal(err)
	}
	os.Remove(dst)
	return took
}

// fillSpread writes total bytes of random data into img (size long) in 16
// extents spread evenly over it, and fsyncs it.
func fillSpread(b *testing.B, img string, size, total int64) {
	b.Helper()
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, total/16)
	if _, err := rand.Read(chunk); err != nil {
		b.Fatal(err)
	}
	for i := range int64(16) {
		if _, err := f.WriteAt(chunk, i*(size/16)); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
}

// xfsReflinkDir makes an xfs with reflink on a sparse image in b's own
// directory, mounts it (a loop device of b's own) and returns a data
// directory in it; all of it is undone at the end.
func xfsReflinkDir(b *testing.B) string {
	b.Helper()
	root := b.TempDir()
	img, mnt := filepath.Join(root, "bvsnap-xfs.img"), filepath.Join(root, "mnt")
	run := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			b.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	run("truncate", "-s", "40G", img)
	run("mkfs.xfs", "-q", "-m", "reflink=1", img)
	dev := run("losetup", "--find", "--show", img)
	b.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	if err := os.Mkdir(mnt, 0o700); err != nil {
		b.Fatal(err)
	}
	run("mount", dev, mnt)
	b.Cleanup(func() {
		// Loop devices of the backend's images first, then the mount.
		for _, l := range loopsOfDir(mnt) {
			exec.Command("losetup", "-d", l).Run()
		}
		exec.Command("umount", mnt).Run()
	})
	return filepath.Join(mnt, "data")
}

// loopsOfDir lists the loop devices backed by files under dir.
func loopsOfDir(dir string) []string {
	var out []string
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err == nil && strings.HasPrefix(strings.TrimSpace(string(data)), dir+"/") {
			out = append(out, "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(f))))
		}
	}
	return out
}
