package fs

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blockvol/blockvol/internal/mounttable"
	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/internal/testenv"

	"github.com/blockvol/blockvol/hostexec"
)

// Tests in this file use real loop devices, mkfs and mount(2). They run
// only as root with the tools installed, and clean up after themselves
// (unmount, losetup -d, remove the backing files).

const (
	MiB = int64(1) << 20
	GiB = int64(1) << 30
	TiB = int64(1) << 40
)

func requireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		testenv.Skip(tb, "needs root (loop devices, mkfs, mount)")
	}
}

func requireTools(tb testing.TB, tools ...string) {
	tb.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Skip(tb, tool+" not installed: "+err.Error())
		}
	}
}

// requireFSTools skips unless root with what Prepare and the tests need for fstype.
func requireFSTools(tb testing.TB, fstype string) {
	tb.Helper()
	requireRoot(tb)
	requireTools(tb, "losetup", "blkid", "blockdev", "wipefs", "mkfs."+fstype)
	if fstype == "ext4" {
		requireTools(tb, "e2fsck")
	}
}

func realFS() *FS {
	return &FS{Run: hostexec.OS{}, Mounter: SyscallMounter{}, Log: quietLog()}
}

func sh(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := hostexec.OS{}.Run(ctx, name, args...)
	if err != nil {
		tb.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out))
}

// sparseFile creates a sparse file of size bytes, with head written at
// offset 0.
func sparseFile(tb testing.TB, size int64, head []byte) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), "disk.img")
	fh, err := os.Create(p)
	if err != nil {
		tb.Fatal(err)
	}
	defer fh.Close()
	if _, err := fh.Write(head); err != nil {
		tb.Fatal(err)
	}
	if err := fh.Truncate(size); err != nil {
		tb.Fatal(err)
	}
	return p
}

// newLoop attaches a loop device to a new sparse file of size bytes (head
// written at its start) and detaches it when the test ends.
func newLoop(tb testing.TB, size int64, head []byte, extra ...string) string {
	tb.Helper()
	img := sparseFile(tb, size, head)
	args := append(append([]string{"--find", "--show"}, extra...), img)
	dev := sh(tb, "losetup", args...)
	tb.Cleanup(func() {
		if _, err := (hostexec.OS{}).Run(context.Background(), "losetup", "-d", dev); err != nil {
			tb.Errorf("losetup -d %s: %v", dev, err)
		}
	})
	return dev
}

// blkidType is TYPE (or "PTTYPE=x" for a partition table) as a low-level
// probe sees it now; "" for a blank device.
func blkidType(tb testing.TB, dev string) string {
	tb.Helper()
	out, err := hostexec.OS{}.Run(context.Background(), "blkid", "-p", "-o", "export", dev)
	if hostexec.ExitCode(err) == 2 {
		return ""
	}
	if err != nil {
		tb.Fatalf("blkid %s: %v", dev, err)
	}
	sig := parseBlkidExport(string(out))
	if sig.PTType != "" {
		return "PTTYPE=" + sig.PTType
	}
	return sig.Type
}

// mountT mounts dev on a new directory and unmounts it when the test ends.
func mountT(tb testing.TB, f *FS, dev, fstype string, opts ...string) string {
	tb.Helper()
	target := filepath.Join(tb.TempDir(), "mnt point") // a space, escaped in mountinfo
	if err := f.Mount(context.Background(), dev, target, fstype, opts); err != nil {
		tb.Fatalf("Mount: %v", err)
	}
	tb.Cleanup(func() {
		if err := f.Unmount(context.Background(), target); err != nil {
			tb.Errorf("cleanup: %v", err)
		}
	})
	return target
}

func sizeFor(fstype string) int64 {
	if fstype == "xfs" {
		return 512 * MiB
	}
	return 64 * MiB
}

func TestRootPrepareLifecycle(t *testing.T) {
	for _, fstype := range SupportedFSTypes {
		t.Run(fstype, func(t *testing.T) {
			requireFSTools(t, fstype)
			ctx := context.Background()
			f := realFS()
			dev := newLoop(t, sizeFor(fstype), nil)

			got, formatted, err := f.Prepare(ctx, dev, fstype, false)
			if err != nil || got != fstype || !formatted {
				t.Fatalf("Prepare blank = (%q, %v, %v), want (%q, true, nil)", got, formatted, err, fstype)
			}
			if typ := blkidType(t, dev); typ != fstype {
				t.Fatalf("blkid after Prepare: %q, want %q", typ, fstype)
			}

			writeAndUnmount(t, f, dev, fstype, "keep.txt")

			got, formatted, err = f.Prepare(ctx, dev, fstype, false)
			if err != nil || got != fstype || formatted {
				t.Fatalf("Prepare again = (%q, %v, %v), want (%q, false, nil)", got, formatted, err, fstype)
			}
			if !fileSurvives(t, f, dev, fstype, "keep.txt") {
				t.Fatal("keep.txt lost although Prepare did not overwrite")
			}

			got, formatted, err = f.Prepare(ctx, dev, fstype, true)
			if err != nil || got != fstype || !formatted {
				t.Fatalf("Prepare overwrite = (%q, %v, %v), want (%q, true, nil)", got, formatted, err, fstype)
			}
			if fileSurvives(t, f, dev, fstype, "keep.txt") {
				t.Fatal("keep.txt survived Prepare with overwrite")
			}
		})
	}
}

// TestRootPrepareKeepsOtherType: an existing filesystem of the other
// supported type is used as it is when overwrite is false, and replaced when
// it is true.
func TestRootPrepareKeepsOtherType(t *testing.T) {
	requireFSTools(t, "ext4")
	requireFSTools(t, "xfs")
	ctx := context.Background()
	f := realFS()
	dev := newLoop(t, 512*MiB, nil)
	if _, _, err := f.Prepare(ctx, dev, "xfs", false); err != nil {
		t.Fatal(err)
	}
	if got, formatted, err := f.Prepare(ctx, dev, "ext4", false); err != nil || got != "xfs" || formatted {
		t.Fatalf("Prepare(ext4) on xfs = (%q, %v, %v), want (xfs, false, nil)", got, formatted, err)
	}
	if got, formatted, err := f.Prepare(ctx, dev, "ext4", true); err != nil || got != "ext4" || !formatted {
		t.Fatalf("Prepare(ext4, overwrite) on xfs = (%q, %v, %v), want (ext4, true, nil)", got, formatted, err)
	}
	if typ := blkidType(t, dev); typ != "ext4" {
		t.Fatalf("blkid: %q, want ext4", typ)
	}
}

func writeAndUnmount(t *testing.T, f *FS, dev, fstype, name string) {
	t.Helper()
	target := filepath.Join(t.TempDir(), "w")
	if err := f.Mount(context.Background(), dev, target, fstype, nil); err != nil {
		t.Fatal(err)
	}
	werr := os.WriteFile(filepath.Join(target, name), []byte("data"), 0o644)
	if err := f.Unmount(context.Background(), target); err != nil {
		t.Fatal(err)
	}
	if werr != nil {
		t.Fatal(werr)
	}
}

func fileSurvives(t *testing.T, f *FS, dev, fstype, name string) bool {
	t.Helper()
	target := filepath.Join(t.TempDir(), "r")
	if err := f.Mount(context.Background(), dev, target, fstype, nil); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := f.Unmount(context.Background(), target); err != nil {
			t.Fatal(err)
		}
	}()
	data, err := os.ReadFile(filepath.Join(target, name))
	return err == nil && string(data) == "data"
}

// mbr is a minimal DOS partition table: a disk signature, one Linux
// partition from sector 2048 to the end, and the 0x55AA boot signature.
func mbr(size int64) []byte {
	b := make([]byte, 512)
	binary.LittleEndian.PutUint32(b[440:], 0x0c8ea87c)
	e := b[446:462]
	e[0] = 0x00                                                  // not bootable
	e[4] = 0x83                                                  // Linux
	binary.LittleEndian.PutUint32(e[8:], 2048)                   // first LBA
	binary.LittleEndian.PutUint32(e[12:], uint32(size/512-2048)) // sectors
	b[510], b[511] = 0x55, 0xAA
	return b
}

func TestRootPartitionTableRefused(t *testing.T) {
	requireFSTools(t, "ext4")
	requireFSTools(t, "xfs")
	const size = 512 * MiB
	head := mbr(size)
	dev := newLoop(t, size, head)
	if typ := blkidType(t, dev); typ != "PTTYPE=dos" {
		t.Fatalf("blkid on the test MBR: %q, want PTTYPE=dos", typ)
	}
	for _, fstype := range SupportedFSTypes {
		for _, overwrite := range []bool{false, true} {
			_, formatted, err := realFS().Prepare(context.Background(), dev, fstype, overwrite)
			if !errors.Is(err, ErrForeignSignature) || formatted {
				t.Fatalf("Prepare(%s, overwrite=%v) = (formatted %v, %v), want ErrForeignSignature", fstype, overwrite, formatted, err)
			}
			if want := "device " + dev + " holds a dos partition table"; !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
	}
	got := make([]byte, 512)
	fh, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if _, err := fh.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, head) {
		t.Fatal("first sector changed after refused Prepare calls")
	}
	if typ := blkidType(t, dev); typ != "PTTYPE=dos" {
		t.Fatalf("blkid after refused Prepare: %q, want PTTYPE=dos", typ)
	}
}

func TestRootSwapRefused(t *testing.T) {
	requireFSTools(t, "ext4")
	requireTools(t, "mkswap")
	dev := newLoop(t, 64*MiB, nil)
	sh(t, "mkswap", dev)
	_, _, err := realFS().Prepare(context.Background(), dev, "ext4", true)
	if !errors.Is(err, ErrForeignSignature) || !strings.Contains(err.Error(), "a swap signature") {
		t.Fatalf("Prepare on swap: %v, want ErrForeignSignature naming swap", err)
	}
	if typ := blkidType(t, dev); typ != "swap" {
		t.Fatalf("blkid after refused Prepare: %q, want swap", typ)
	}
}

func TestRootReadOnlyRefused(t *testing.T) {
	requireFSTools(t, "ext4")
	dev := newLoop(t, 64*MiB, nil, "--read-only")
	_, formatted, err := realFS().Prepare(context.Background(), dev, "ext4", false)
	if !errors.Is(err, ErrReadOnly) || formatted {
		t.Fatalf("Prepare on read-only device = (formatted %v, %v), want ErrReadOnly", formatted, err)
	}
	if typ := blkidType(t, dev); typ != "" {
		t.Fatalf("blkid after refused Prepare: %q, want blank", typ)
	}
}

func TestRootMountUnmount(t *testing.T) {
	requireFSTools(t, "ext4")
	ctx := context.Background()
	f := realFS()
	dev := newLoop(t, 64*MiB, nil)
	if _, _, err := f.Prepare(ctx, dev, "ext4", false); err != nil {
		t.Fatal(err)
	}
	target := mountT(t, f, dev, "ext4", "noatime", "nodiscard", "lazytime")

	if got, err := f.MountedDevice(target); err != nil || got != dev {
		t.Fatalf("MountedDevice(%q) = %q, %v; want %q", target, got, err, dev)
	}
	// The real mount table, not just what we asked for.
	e, err := (&FS{}).mountAt(target)
	if err != nil || e == nil {
		t.Fatalf("mount at %q not in /proc/self/mountinfo: %v", target, err)
	}
	opts := strings.Split(e.Options, ",")
	for _, want := range []string{"rw", "nosuid", "nodev", "noatime"} {
		if !slices.Contains(opts, want) {
			t.Errorf("mount options %q lack %q", e.Options, want)
		}
	}
	if e.FSType != "ext4" {
		t.Errorf("fstype %q, want ext4", e.FSType)
	}

	// Mounting again is a no-op, not a second, stacked mount.
	if err := f.Mount(ctx, dev, target, "ext4", []string{"noatime"}); err != nil {
		t.Fatalf("second Mount: %v", err)
	}
	if n := countMounts(t, target); n != 1 {
		t.Fatalf("%d mounts at %q after second Mount, want 1", n, target)
	}

	for i := 0; i < 2; i++ {
		if err := f.Unmount(ctx, target); err != nil {
			t.Fatalf("Unmount #%d: %v", i+1, err)
		}
	}
	if got, err := f.MountedDevice(target); err != nil || got != "" {
		t.Fatalf("MountedDevice after Unmount = %q, %v; want nothing", got, err)
	}
	if err := f.Unmount(ctx, filepath.Join(target, "never-existed")); err != nil {
		t.Fatalf("Unmount of a missing path: %v", err)
	}
}

func TestRootUnmountBusy(t *testing.T) {
	requireFSTools(t, "ext4")
	ctx := context.Background()
	f := realFS()
	dev := newLoop(t, 64*MiB, nil)
	if _, _, err := f.Prepare(ctx, dev, "ext4", false); err != nil {
		t.Fatal(err)
	}
	target := mountT(t, f, dev, "ext4")
	fh, err := os.Create(filepath.Join(target, "held-open"))
	if err != nil {
		t.Fatal(err)
	}
	err = f.Unmount(ctx, target)
	fh.Close()
	if !errors.Is(err, sentinel.ErrBusy) {
		t.Fatalf("Unmount with an open file: %v, want sentinel.ErrBusy", err)
	}
	if got, _ := f.MountedDevice(target); got != dev {
		t.Fatalf("after a busy Unmount, %q mounted at target, want %q", got, dev)
	}
}

// TestRootFormatLargeSparse formats 1 GiB and 1 TiB sparse devices: both
// must succeed (and, since mkfs neither discards nor initialises inode
// tables, promptly). BenchmarkFormat compares the times.
func TestRootFormatLargeSparse(t *testing.T) {
	for _, fstype := range SupportedFSTypes {
		for _, size := range []int64{GiB, TiB} {
			t.Run(fstype+"/"+sizeName(size), func(t *testing.T) {
				requireFSTools(t, fstype)
				dev := newLoop(t, size, nil)
				start := time.Now()
				got, formatted, err := realFS().Prepare(context.Background(), dev, fstype, false)
				if err != nil || got != fstype || !formatted {
					t.Fatalf("Prepare = (%q, %v, %v), want (%q, true, nil)", got, formatted, err, fstype)
				}
				t.Logf("Prepare %s on %s: %v", fstype, sizeName(size), time.Since(start))
				if typ := blkidType(t, dev); typ != fstype {
					t.Fatalf("blkid: %q, want %q", typ, fstype)
				}
			})
		}
	}
}

// BenchmarkFormat times mkfs alone on 1 GiB and 1 TiB sparse loop devices;
// the two sizes should take about the same time.
func BenchmarkFormat(b *testing.B) {
	for _, fstype := range SupportedFSTypes {
		for _, size := range []int64{GiB, TiB} {
			b.Run(fstype+"/"+sizeName(size), func(b *testing.B) {
				requireFSTools(b, fstype)
				ctx := context.Background()
				f := realFS()
				dev := newLoop(b, size, nil)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					sh(b, "wipefs", "-a", dev)
					b.StartTimer()
					if err := f.format(ctx, dev, fstype); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func sizeName(size int64) string {
	if size >= TiB {
		return "1TiB"
	}
	return "1GiB"
}

func countMounts(t *testing.T, target string) int {
	t.Helper()
	entries, err := mounttable.Read("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		if e.Mountpoint == target {
			n++
		}
	}
	return n
}

// MinSizeBytes is what the real mkfs accepts: each supported type is made
// on a file of exactly its minimum, and mkfs.xfs refuses one 4 KiB smaller
// (our minimum is its minimum, not a guess above or below it).
func TestRootMinSizeIsMkfsMinimum(t *testing.T) {
	for _, fstype := range SupportedFSTypes {
		requireTools(t, "mkfs."+fstype)
		for _, size := range []int64{MinSizeBytes(fstype), MinSizeBytes(fstype) - 4096} {
			img := filepath.Join(t.TempDir(), "img")
			if err := os.WriteFile(img, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(img, size); err != nil {
				t.Fatal(err)
			}
			argv := mkfsArgv(fstype, img)
			out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
			switch {
			case size == MinSizeBytes(fstype) && err != nil:
				t.Errorf("%s refuses %d bytes, our minimum: %v: %s", argv[0], size, err, out)
			case size < MinSizeBytes(fstype) && err == nil && fstype == "xfs":
				t.Errorf("%s accepts %d bytes, below our minimum %d: the minimum is too high", argv[0], size, MinSizeBytes(fstype))
			}
		}
	}
}
