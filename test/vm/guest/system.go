package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"
)

// run runs a program to completion and returns its combined output; a
// failure carries the output.
func run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// exitCode returns the exit status in err, or -1.
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// daemon starts a long-running program whose output goes to logPath.
func daemon(logPath, name string, args ...string) (*exec.Cmd, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go cmd.Wait()
	return cmd, nil
}

// waitFor polls cond every interval until it holds, fails, or timeout
// (or ctx) ends.
func waitFor(ctx context.Context, timeout, interval time.Duration, what string, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		ok, err := cond()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: not within %s", what, timeout)
		case <-time.After(interval):
		}
	}
}

func readTrim(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	point, fstype, source, opts string
}

func mounts() ([]mountEntry, error) {
	infos, err := mountinfo.GetMounts(nil)
	if err != nil {
		return nil, err
	}
	out := make([]mountEntry, 0, len(infos))
	for _, m := range infos {
		out = append(out, mountEntry{point: m.Mountpoint, opts: m.Options, fstype: m.FSType, source: m.Source})
	}
	return out, nil
}

// mountAt returns the mount at point, if any.
func mountAt(point string) (mountEntry, bool) {
	ms, _ := mounts()
	for i := len(ms) - 1; i >= 0; i-- {
		if ms[i].point == point {
			return ms[i], true
		}
	}
	return mountEntry{}, false
}

// mountsUnder lists the mounts at or below dir.
func mountsUnder(dir string) []mountEntry {
	ms, _ := mounts()
	var out []mountEntry
	for _, m := range ms {
		if m.point == dir || strings.HasPrefix(m.point, dir+"/") {
			out = append(out, m)
		}
	}
	return out
}

func hasOpt(opts, want string) bool {
	for _, o := range strings.Split(opts, ",") {
		if o == want {
			return true
		}
	}
	return false
}

// isession is one iSCSI session as sysfs shows it.
type isession struct {
	name, iqn, portal string
	luns              map[int]string // LUN -> sdX
}

func (s isession) String() string {
	var l []string
	for lun, dev := range s.luns {
		l = append(l, fmt.Sprintf("%d:%s", lun, dev))
	}
	sort.Strings(l)
	return fmt.Sprintf("%s %s %s [%s]", s.name, s.iqn, s.portal, strings.Join(l, " "))
}

// sessions lists the iSCSI sessions, optionally of one target only.
func sessions(iqn string) []isession {
	dirs, _ := filepath.Glob("/sys/class/iscsi_session/session*")
	var out []isession
	for _, d := range dirs {
		s := isession{name: filepath.Base(d), iqn: readTrim(d + "/targetname"), luns: map[int]string{}}
		if iqn != "" && s.iqn != iqn {
			continue
		}
		conn := "/sys/class/iscsi_connection/connection" + strings.TrimPrefix(s.name, "session") + ":0"
		s.portal = readTrim(conn+"/persistent_address") + ":" + readTrim(conn+"/persistent_port")
		blocks, _ := filepath.Glob(d + "/device/target*/*:*:*:*/block/*")
		for _, b := range blocks {
			hctl := filepath.Base(filepath.Dir(filepath.Dir(b)))
			f := strings.Split(hctl, ":")
			lun, _ := strconv.Atoi(f[len(f)-1])
			s.luns[lun] = filepath.Base(b)
		}
		out = append(out, s)
	}
	return out
}

// loopDevices maps each attached loop device to its backing file.
func loopDevices() map[string]string {
	out := map[string]string{}
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(f)))
		out[dev] = readTrim(f)
	}
	return out
}

// loopsOf lists the loop devices backed by img.
func loopsOf(img string) []string {
	var out []string
	for dev, back := range loopDevices() {
		if back == img || strings.TrimSuffix(back, " (deleted)") == img {
			out = append(out, dev)
		}
	}
	sort.Strings(out)
	return out
}

// blockName resolves a device path (/dev/disk/by-path/..., /dev/sdb) to
// its kernel name (sdb).
func blockName(dev string) (string, error) {
	p, err := filepath.EvalSymlinks(dev)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return "", err
	}
	if fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice != 0 {
		return "", fmt.Errorf("%s is not a block device", dev)
	}
	return filepath.Base(p), nil
}

// deviceBytes returns the size of block device name from sysfs.
func deviceBytes(name string) int64 {
	n, _ := strconv.ParseInt(readTrim("/sys/block/"+name+"/size"), 10, 64)
	return n * 512
}

// fsType probes dev with blkid -p; "" when blank.
func fsType(ctx context.Context, dev string) (string, error) {
	out, err := exec.CommandContext(ctx, "blkid", "-p", "-s", "TYPE", "-o", "value", dev).Output()
	if exitCode(err) == 2 {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("blkid -p %s: %w", dev, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// pattern is the deterministic content written by writeData.
func pattern(seed, block int) []byte {
	b := make([]byte, 64*1024)
	for j := range b {
		b[j] = byte((seed*977 + block*131 + j*7) ^ (j >> 8))
	}
	return b
}

// writeData writes 4 MiB derived from seed to path, fsyncs file and
// directory, and returns the sha256.
func writeData(path string, seed int) (string, error) {
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for i := 0; i < 64; i++ {
		b := pattern(seed, i)
		h.Write(b)
		if _, err := f.Write(b); err != nil {
			f.Close()
			return "", err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// sumFile returns the sha256 of a file.
func sumFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// dropCaches makes the next reads come from the devices.
func dropCaches() error {
	syscall.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o200)
}

// emptyDir reports the names in dir.
func dirNames(dir string) ([]string, error) {
	es, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out, nil
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// dumpSystem prints what a failed scenario leaves behind.
func dumpSystem(r *reporter) {
	var b bytes.Buffer
	for _, s := range sessions("") {
		fmt.Fprintln(&b, s)
	}
	r.detail("iSCSI sessions (sysfs)", b.String())
	b.Reset()
	for dev, img := range loopDevices() {
		fmt.Fprintf(&b, "%s %s\n", dev, img)
	}
	r.detail("loop devices", b.String())
	b.Reset()
	for _, m := range mountsUnder("/srv") {
		fmt.Fprintf(&b, "%s %s %s %s\n", m.point, m.fstype, m.source, m.opts)
	}
	for _, m := range mountsUnder("/mnt") {
		fmt.Fprintf(&b, "%s %s %s %s\n", m.point, m.fstype, m.source, m.opts)
	}
	r.detail("mounts under /srv and /mnt", b.String())
	b.Reset()
	procs, _ := filepath.Glob("/proc/[0-9]*/comm")
	for _, p := range procs {
		switch comm := readTrim(p); comm {
		case "tgtd", "iscsid", "blockvol", "iscsiadm", "tgtadm", "flock", "systemd-udevd", "udevadm":
			fmt.Fprintf(&b, "%s %s\n", filepath.Base(filepath.Dir(p)), comm)
		}
	}
	r.detail("daemons and tools running", b.String())
	logs, _ := filepath.Glob("/run/vmtest/*d*.log")
	for _, l := range logs {
		if strings.Contains(l, "plugin") || strings.Contains(l, "udevd") {
			continue
		}
		r.detail(l+" (last 15 lines)", tail(l, 15))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, "dmesg").CombinedOutput()
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) > 25 {
		lines = lines[len(lines)-25:]
	}
	r.detail("dmesg (last 25 lines)", strings.Join(lines, "\n"))
}

func mkdir(dir string) error { return os.MkdirAll(dir, 0o755) }
