package soak

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blockvol/blockvol/internal/testenv"
)

// The plugin is killed while its losetup (or its mkfs) runs. The program
// must die with it: an orphaned losetup would attach a loop device after
// the restarted plugin's recovery, with no record (and Remove would say
// "in use" forever); an orphaned mkfs would finish a filesystem (with
// lost+found) on a volume never handed out. The shim stands in for the
// slow program: it records its pid, then waits 10 s before running the
// real one.
func TestKillDuringAHostProgram(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real plugin on real loop devices")
	}
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "losetup", "mkfs.ext4", "blkid", "wipefs", "e2fsck", "blockdev", "go")
	for _, tc := range []struct{ tool, match string }{
		{"losetup", "--find"},
		{"mkfs.ext4", ""},
	} {
		t.Run(tc.tool, func(t *testing.T) {
			s := newSoak(t)
			real, err := exec.LookPath(tc.tool)
			if err != nil {
				t.Fatal(err)
			}
			marker := filepath.Join(s.dir, "shim.pid")
			shim := fmt.Sprintf(`#!/bin/sh
case "$*" in *%s*) echo $$ > %s; sleep 10;; esac
exec %s "$@"
`, tc.match, marker, real)
			if err := os.WriteFile(filepath.Join(s.shimDir, tc.tool), []byte(shim), 0o755); err != nil {
				t.Fatal(err)
			}
			s.start(true)
			ctx := context.Background()
			if err := s.call(ctx, "/VolumeDriver.Create", nameReq{Name: "bvkill"}, nil); err != nil {
				t.Fatal(err)
			}
			id := strings.Repeat("c", 64)
			go func() { _ = s.call(ctx, "/VolumeDriver.Mount", nameReq{Name: "bvkill", ID: id}, nil) }()
			pid := waitPid(t, marker)
			// Its sleep, a grandchild of the plugin, is reaped with the group.
			t.Cleanup(func() { _ = syscall.Kill(-pid, syscall.SIGKILL); _ = syscall.Kill(pid, syscall.SIGKILL) })
			s.kill9()
			if !waitGone(pid) {
				t.Fatalf("%s (pid %d) outlived the killed plugin", tc.tool, pid)
			}

			s.start(false)
			var m struct{ Mountpoint string }
			if err := s.call(ctx, "/VolumeDriver.Mount", nameReq{Name: "bvkill", ID: id}, &m); err != nil {
				t.Fatalf("Mount after restart: %v", err)
			}
			if entries, err := os.ReadDir(m.Mountpoint); err != nil || len(entries) != 0 {
				t.Fatalf("a volume never handed out holds %v (%v)", entries, err)
			}
			if err := s.call(ctx, "/VolumeDriver.Unmount", nameReq{Name: "bvkill", ID: id}, nil); err != nil {
				t.Fatalf("Unmount: %v", err)
			}
			if err := s.call(ctx, "/VolumeDriver.Remove", nameReq{Name: "bvkill"}, nil); err != nil {
				t.Fatalf("Remove: %v", err)
			}
			if loops, mounts := s.loops(), s.mounts(); len(loops)+len(mounts) > 0 {
				t.Fatalf("left: loop devices %v, mounts %v", loops, mounts)
			}
		})
	}
}

// waitPid returns the pid the shim wrote to path, waiting up to 30 s.
func waitPid(t *testing.T, path string) int {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	for {
		if data, err := os.ReadFile(path); err == nil && strings.HasSuffix(string(data), "\n") {
			pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
			if err != nil {
				t.Fatal(err)
			}
			return pid
		}
		select {
		case <-deadline:
			t.Fatal("the shim never ran")
		case <-tick.C:
		}
	}
}

// waitGone waits up to 5 s for pid to exit (a zombie counts as gone).
func waitGone(pid int) bool {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(5 * time.Second)
	for {
		data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return true
		}
		if i := strings.LastIndexByte(string(data), ')'); i >= 0 && i+2 < len(data) && data[i+2] == 'Z' {
			return true
		}
		select {
		case <-deadline:
			return false
		case <-tick.C:
		}
	}
}
