// Package systemd proves install.sh and the units on a real systemd: a qemu
// guest (test/vm's qemu, software emulation) boots a Debian root disk with
// systemd as PID 1 and Docker, built by setup.sh from Debian's packages and
// cached, and runs guest/driver.sh from a second, read-only disk that holds
// the static blockvol, install.sh, systemd/ and docs/. The driver reports a
// line per step on the second serial port; each becomes a subtest here.
//
// Part of `make test` (test/setup.sh builds the disk) and `make
// e2e-systemd`. Needs root (qemu and the cache are root's), qemu and the
// image of setup.sh; skips without them (fails with BLOCKVOL_NO_SKIP=1).
// BLOCKVOL_SYSTEMD_TIMEOUT (default 25m, under `make test`'s 30m per
// package) bounds the guest's run. The logs of the last run stay in
// <cache>/systemd-logs.
package systemd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blockvol/blockvol/internal/testenv"
	"github.com/blockvol/blockvol/test/vm"
)

// steps are the driver's steps in order (guest/driver.sh).
var steps = []string{
	"boot", "install", "docker-ordered-after-socket", "first-call-activates", "write",
	"reboot-socket-first", "reboot-volume-back", "stop-drains", "restart-keeps-mounts",
	"uninstall-keeps-data", "purge",
}

func TestSystemdGuest(t *testing.T) {
	testenv.RequireLong(t, "a qemu guest")
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "mke2fs", "qemu-img", "go")
	qemu, err := vm.FindQEMU()
	if errors.Is(err, vm.ErrMissing) {
		testenv.Skip(t, err.Error()+" (test/systemd/setup.sh)")
	} else if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(vm.CacheDir(), "systemd", "current")
	for _, f := range []string{"root.img", "vmlinuz", "initrd.img"} {
		if _, err := os.Stat(filepath.Join(img, f)); err != nil {
			testenv.Skip(t, "no guest image: run test/systemd/setup.sh ("+err.Error()+")")
		}
	}
	timeout := 25 * time.Minute
	if s := os.Getenv("BLOCKVOL_SYSTEMD_TIMEOUT"); s != "" {
		if timeout, err = time.ParseDuration(s); err != nil {
			t.Fatalf("BLOCKVOL_SYSTEMD_TIMEOUT: %v", err)
		}
	}

	logs := filepath.Join(vm.CacheDir(), "systemd-logs")
	if err := os.RemoveAll(logs); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(logs, 0o755); err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	testDisk := buildTestDisk(ctx, t, work)
	overlay := filepath.Join(work, "root.qcow2")
	mustRun(ctx, t, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", filepath.Join(img, "root.img"), overlay)

	console, report := filepath.Join(logs, "console.log"), filepath.Join(logs, "report.log")
	cmd := exec.CommandContext(ctx, qemu,
		"-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", "1536",
		"-nodefaults", "-no-user-config", "-display", "none", "-nic", "none",
		"-kernel", filepath.Join(img, "vmlinuz"), "-initrd", filepath.Join(img, "initrd.img"),
		"-append", "root=/dev/vda rw console=ttyS0 quiet apparmor=0 systemd.journald.forward_to_console=1",
		"-drive", "file="+overlay+",if=virtio,format=qcow2,cache=unsafe",
		"-drive", "file="+testDisk+",if=virtio,format=raw,readonly=on",
		"-serial", "file:"+console, "-serial", "file:"+report)
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	wall := time.Since(start)
	t.Logf("guest ran %s (two boots); logs in %s", wall.Round(time.Second), logs)
	if ctx.Err() != nil {
		t.Errorf("the guest did not power off within %s", timeout)
	} else if err != nil {
		t.Errorf("qemu: %v\n%s", err, out)
	}
	checkReport(t, report, console)
}

// checkReport turns the driver's lines into subtests, in order; a step that
// never reported fails with the end of the console.
func checkReport(t *testing.T, report, console string) {
	f, err := os.Open(report)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	results := map[string]string{}
	var extra []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		rest, ok := strings.CutPrefix(line, "BVSD ")
		if !ok {
			continue
		}
		name, res, _ := strings.Cut(rest, " ")
		switch {
		case name == "log" || name == "phase" || name == "rebooting" || name == "done":
			extra = append(extra, rest)
		default:
			results[name] = res
		}
	}
	for _, s := range steps {
		res, ok := results[s]
		t.Run(s, func(t *testing.T) {
			switch {
			case !ok:
				t.Fatalf("the guest never reported this step\n%s\nconsole (end):\n%s", strings.Join(extra, "\n"), tail(console, 40))
			case strings.HasPrefix(res, "ok"):
				if d := strings.TrimSpace(strings.TrimPrefix(res, "ok")); d != "" {
					t.Log(d)
				}
			default:
				t.Fatalf("%s\n%s", res, strings.Join(extra, "\n"))
			}
		})
	}
}

// buildTestDisk makes the read-only ext4 disk the driver runs from.
func buildTestDisk(ctx context.Context, t *testing.T, work string) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	repo := filepath.Clean(filepath.Join(wd, "..", ".."))
	dir := filepath.Join(work, "disk")
	if err := os.MkdirAll(filepath.Join(dir, "systemd"), 0o755); err != nil {
		t.Fatal(err)
	}
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-X main.version=bvsd",
		"-o", filepath.Join(dir, "blockvol"), "./cmd/blockvol")
	build.Dir, build.Env = repo, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	copies := map[string]string{
		"install.sh": "install.sh", "config.example.toml": "config.example.toml",
		"systemd/blockvol.service": "systemd/blockvol.service", "systemd/blockvol.socket": "systemd/blockvol.socket",
		"test/systemd/guest/driver.sh": "driver.sh",
	}
	docs, _ := filepath.Glob(filepath.Join(repo, "docs", "*.md"))
	if len(docs) > 0 {
		if err := os.MkdirAll(filepath.Join(dir, "docs"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range docs {
		copies["docs/"+filepath.Base(d)] = "docs/" + filepath.Base(d)
	}
	for src, dst := range copies {
		b, err := os.ReadFile(filepath.Join(repo, src))
		if err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if strings.HasSuffix(src, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(filepath.Join(dir, dst), b, mode); err != nil {
			t.Fatal(err)
		}
	}
	disk := filepath.Join(work, "test.img")
	mustRun(ctx, t, "mke2fs", "-q", "-t", "ext4", "-L", "bvsdtest", "-d", dir, disk, "128M")
	return disk
}

func mustRun(ctx context.Context, t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.CommandContext(ctx, name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprint(err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
