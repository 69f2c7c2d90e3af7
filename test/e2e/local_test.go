package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// mkfsExt4Flags are the flags blockvol's loop backend formats with; the
// benchmark's local-driver baseline uses the same.
var mkfsExt4Flags = []string{"-q", "-F", "-m", "0", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1"}

// loopFS is a sparse image on a loop device holding a fresh ext4, as Docker's
// local driver can mount it (-o type=ext4 -o device=/dev/loopN).
type loopFS struct {
	Image string
	Dev   string
}

// newLoopExt4 makes a sparse file of size bytes, attaches it and formats it.
func newLoopExt4(ctx context.Context, dir, name string, size int64) (l *loopFS, err error) {
	l = &loopFS{Image: filepath.Join(dir, name+".img")}
	f, err := os.Create(l.Image)
	if err != nil {
		return nil, err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = l.Close()
		}
	}()
	out, err := runCmd(ctx, "losetup", "--find", "--show", l.Image)
	if err != nil {
		return l, err
	}
	l.Dev = strings.TrimSpace(out)
	if _, err := runCmd(ctx, "mkfs.ext4", append(mkfsExt4Flags, l.Dev)...); err != nil {
		return l, err
	}
	return l, nil
}

// Close detaches the loop device and removes the image.
func (l *loopFS) Close() error {
	var errs []error
	if l.Dev != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := runCmd(ctx, "losetup", "-d", l.Dev); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(l.Image); err != nil && !isNotExist(err) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// fsFacts is what a container sees at /data.
type fsFacts struct {
	FSType    string   // from /proc/mounts
	Options   string   // mount options from /proc/mounts
	StatType  string   // busybox `stat -f -c %T`
	SizeBytes int64    // df total
	Entries   []string // `ls -A`
}

// inspectFS runs a throw-away container on volume and reports /data.
func inspectFS(t testing.TB, volume string) fsFacts {
	t.Helper()
	script := `set -e
echo "mount $(grep ' /data ' /proc/mounts)"
echo "stat $(stat -f -c %T /data)"
echo "df $(df -P -k /data | tail -n 1)"
echo "ls $(ls -A /data | tr '\n' ' ')"`
	out, err := runContainer(t, "--rm", "-v", volume+":/data", env.image, "sh", "-c", script)
	if err != nil {
		t.Fatal(err)
	}
	var f fsFacts
	for _, line := range strings.Split(out, "\n") {
		key, rest, _ := strings.Cut(line, " ")
		fields := strings.Fields(rest)
		switch key {
		case "mount": // dev /data type opts 0 0
			if len(fields) >= 4 {
				f.FSType, f.Options = fields[2], fields[3]
			}
		case "stat":
			f.StatType = strings.TrimSpace(rest)
		case "df": // dev 1K-blocks used avail use% mountpoint
			if len(fields) >= 2 {
				kib, err := strconv.ParseInt(fields[1], 10, 64)
				if err != nil {
					t.Fatalf("df line %q: %v", rest, err)
				}
				f.SizeBytes = kib * 1024
			}
		case "ls":
			f.Entries = fields
		}
	}
	if f.FSType == "" || f.SizeBytes == 0 {
		t.Fatalf("cannot read /data facts from container output:\n%s", out)
	}
	t.Logf("%s in a container: %s (stat -f: %s), %s, df size %d KiB, entries %v",
		volume, f.FSType, f.StatType, f.Options, f.SizeBytes/1024, f.Entries)
	return f
}

func hasOption(opts, want string) bool {
	for _, o := range strings.Split(opts, ",") {
		if o == want {
			return true
		}
	}
	return false
}

// TestHarnessLocalDriver checks the harness itself with Docker's own local
// driver on a loop-backed ext4: the image runs, a container sees the
// filesystem, data written by one container is read by the next.
func TestHarnessLocalDriver(t *testing.T) {
	requireDocker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	l, err := newLoopExt4(ctx, dir, "harness", 256<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
	vol := uniqueName(t)
	mustDocker(t, "volume", "create", "-d", "local", "-o", "type=ext4", "-o", "device="+l.Dev, vol)
	t.Cleanup(func() { _, _ = docker(t, "volume", "rm", "-f", vol) })

	f := inspectFS(t, vol)
	if f.FSType != "ext4" {
		t.Errorf("fstype %q, want ext4", f.FSType)
	}
	if f.SizeBytes < 200<<20 || f.SizeBytes > 256<<20 {
		t.Errorf("size %d, want about 256 MiB", f.SizeBytes)
	}
	if _, err := runContainer(t, "--rm", "-v", vol+":/data", env.image, "sh", "-c", "echo hello > /data/greeting"); err != nil {
		t.Fatal(err)
	}
	out, err := runContainer(t, "--rm", "-v", vol+":/data", env.image, "cat", "/data/greeting")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out) != "hello" {
		t.Errorf("read %q, want hello", out)
	}
	if _, err := runContainer(t, "--rm", env.image, "false"); err == nil {
		t.Error("a failing container reported success")
	}
}

// uniqueName is a volume name derived from the test name, unique per run.
func uniqueName(t testing.TB) string {
	var b strings.Builder
	for _, r := range strings.ToLower(t.Name()) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	s := strings.Trim(b.String(), "-")
	if len(s) > 40 {
		s = s[:40]
	}
	return fmt.Sprintf("%s-%d", strings.TrimPrefix(s, "test"), time.Now().UnixNano()%1_000_000)
}
