package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Kill hooks make `kill -9` of the plugin land at an exact point of a
// mount or unmount, instead of racing a poller against it.
//
// The plugin runs with /opt/vmtest/hookbin first on its PATH; the programs
// there (iscsiadm, losetup, mkfs.*, ...) are links to this binary. Without
// an armed hook they exec the real program at once. A hook is armed by
// writing hookFile:
//
//	<program> <before|after> <argument that must appear>
//
// and fires once: the hook file is renamed to hookFile+".fired" (so that a
// second matching call passes through), then
//   - before: the plugin (our parent) is killed with SIGKILL and the real
//     program never runs;
//   - after: the real program runs; when it succeeded the plugin is killed
//     (when it failed, the hook is armed again).
//
// A fourth field "release=PID:PATH" changes the action of a "before" hook:
// instead of killing the plugin, process PID is killed and the hook waits
// until PATH no longer exists (up to 10 s) before running the real
// program — a way to make something vanish at an exact point.
const (
	hookDir  = "/opt/vmtest/hookbin"
	hookFile = "/run/vmtest/hook"
)

// realDirs are searched for the real program behind a hook link.
var realDirs = []string{"/usr/sbin", "/usr/bin"}

// armHook arms a one-shot kill hook.
func armHook(program, when, arg string) error {
	os.Remove(hookFile + ".fired")
	return os.WriteFile(hookFile, []byte(program+" "+when+" "+arg+"\n"), 0o644)
}

// armReleaseHook arms a one-shot hook that, right before program runs
// with arg, kills process pid and waits until path is gone.
func armReleaseHook(program, arg string, pid int, path string) error {
	os.Remove(hookFile + ".fired")
	return os.WriteFile(hookFile, []byte(fmt.Sprintf("%s before %s release=%d:%s\n", program, arg, pid, path)), 0o644)
}

// hookFired reports whether the armed hook fired, and disarms it.
func hookFired() bool {
	os.Remove(hookFile)
	_, err := os.Stat(hookFile + ".fired")
	os.Remove(hookFile + ".fired")
	return err == nil
}

// hookMain runs as program name (argv[0] was a hook link).
func hookMain(name string, args []string) int {
	real := ""
	for _, d := range realDirs {
		if fi, err := os.Stat(filepath.Join(d, name)); err == nil && !fi.IsDir() {
			real = filepath.Join(d, name)
			break
		}
	}
	if real == "" {
		fmt.Fprintf(os.Stderr, "vmtest hook: no real %s\n", name)
		return 127
	}
	when, action := matchHook(name, args)
	if when == "" {
		err := syscall.Exec(real, append([]string{name}, args...), os.Environ())
		fmt.Fprintf(os.Stderr, "vmtest hook: exec %s: %v\n", real, err)
		return 126
	}
	parent := os.Getppid()
	if rel, ok := strings.CutPrefix(action, "release="); ok && when == "before" {
		pidStr, path, _ := strings.Cut(rel, ":")
		if pid, err := strconv.Atoi(pidStr); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		for i := 0; i < 1000; i++ {
			if _, err := os.Stat(path); err != nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		err := syscall.Exec(real, append([]string{name}, args...), os.Environ())
		fmt.Fprintf(os.Stderr, "vmtest hook: exec %s: %v\n", real, err)
		return 126
	}
	if when == "before" {
		syscall.Kill(parent, syscall.SIGKILL)
		return 137
	}
	cmd := exec.Command(real, args...)
	cmd.Args[0] = name
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	if err == nil {
		syscall.Kill(parent, syscall.SIGKILL)
		return 0
	}
	// Not the point we wanted: re-arm for the next matching call.
	os.Rename(hookFile+".fired", hookFile)
	return exitCode(err)
}

// matchHook claims the armed hook when it matches this call and returns
// "before" or "after", and the optional action; "" when no hook applies.
func matchHook(name string, args []string) (when, action string) {
	b, err := os.ReadFile(hookFile)
	if err != nil {
		return "", ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 || len(f) > 4 || f[0] != name {
		return "", ""
	}
	if len(f) == 4 {
		action = f[3]
	}
	found := false
	for _, a := range args {
		if a == f[2] {
			found = true
		}
	}
	if !found {
		return "", ""
	}
	// Claim it: only one caller may fire.
	if err := os.Rename(hookFile, hookFile+".fired"); err != nil {
		return "", ""
	}
	return f[1], action
}
