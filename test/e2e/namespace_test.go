package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// The package runs in a mount namespace of its own, so that its dockerd
// never sees a plugin that is not the tests' own: a dockerd discovers every
// legacy plugin in /run/docker/plugins (and the spec directories), and a
// teardown once removed the volumes of a user's plugin it found there.
//
// TestMain (outside) starts the bystander, then runs the test binary again
// with the same arguments in a new mount namespace (inside), and checks the
// bystander when it ends. Inside, the plugin directories are private empty
// tmpfs mounts: the tests' plugins serve their sockets there, and dockerd
// sees nothing else.

// nsEnv marks the test binary that runs inside the private namespace.
const nsEnv = "BLOCKVOL_E2E_NAMESPACE"

// pluginDirs are where dockerd discovers legacy plugins: sockets, then the
// spec files.
var pluginDirs = []string{pluginSocketDir, "/etc/docker/plugins", "/usr/lib/docker/plugins"}

func insideNamespace() bool { return os.Getenv(nsEnv) == "1" }

// ownNamespace reports whether this process has a mount namespace other
// than its parent's: privatizeNamespace must never run in the host's.
func ownNamespace() error {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return err
	}
	parent, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", os.Getppid()))
	if err != nil {
		return err
	}
	if self == parent {
		return fmt.Errorf("%s=1 is set but this process shares its parent's mount namespace (%s); refusing to change the host's mounts", nsEnv, self)
	}
	return nil
}

// runInNamespace runs this test binary again, with the same arguments and
// output, in a new mount namespace, and returns its exit code. It dies with
// us (Pdeathsig); SIGINT and SIGTERM are passed on.
func runInNamespace() int {
	cmd := exec.Command(os.Args[0], os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), nsEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: run the tests in a mount namespace of their own: %v\n", err)
		return 1
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				_ = cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	err := cmd.Wait()
	close(done)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		return ee.ExitCode()
	default:
		fmt.Fprintf(os.Stderr, "e2e: tests in the mount namespace: %v\n", err)
		return 1
	}
}

// privatizeNamespace, inside, stops mount events from reaching the host,
// lets go of the host's block-device mounts the namespace need not hold,
// and hides the plugin directories behind empty tmpfs mounts.
func privatizeNamespace() error {
	if err := ownNamespace(); err != nil {
		return err
	}
	// Mounts made here stay here; unmounts on the host still reach us
	// where the host's mounts are shared.
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("make / a slave mount in the private namespace: %w", err)
	}
	if err := releaseForeignMounts(); err != nil {
		return err
	}
	for _, dir := range pluginDirs {
		if err := hideDir(dir); err != nil {
			return err
		}
	}
	return nil
}

// releaseForeignMounts unmounts, in this namespace only, the host's
// block-device filesystems that no path of the run lies on (a user's
// volumes, another test's loop mounts): our copy of such a mount would
// keep its filesystem alive after its owner unmounted it on the host.
func releaseForeignMounts() error {
	mounts, err := readMounts()
	if err != nil {
		return err
	}
	needed := []string{"/", runParent, os.TempDir(), filepath.Dir(os.Args[0]),
		"/usr", "/etc", "/var/lib", "/root", "/home", "/opt", "/bin", "/sbin", "/lib"}
	if wd, err := os.Getwd(); err == nil {
		needed = append(needed, wd)
	}
	for _, v := range []string{"HOME", "GOROOT", "GOPATH", "GOCACHE", "GOMODCACHE", "TMPDIR"} {
		if p := os.Getenv(v); p != "" {
			needed = append(needed, p)
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].MountPoint) > len(mounts[j].MountPoint) })
	for _, m := range mounts {
		if !strings.HasPrefix(m.Source, "/dev/") || holdsAny(m.MountPoint, needed) {
			continue
		}
		if err := syscall.Unmount(m.MountPoint, syscall.MNT_DETACH); err != nil &&
			!errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("let go of %s in the private namespace: %w", m.MountPoint, err)
		}
	}
	return nil
}

// holdsAny reports whether mount point mp is one of paths or above one.
func holdsAny(mp string, paths []string) bool {
	for _, p := range paths {
		if isUnder(filepath.Clean(p), mp) {
			return true
		}
	}
	return false
}

// hideDir mounts an empty tmpfs over dir (over its parent, with an empty dir
// inside, where dir does not exist). Where the parent is missing too it
// creates dir for the socket directory (dockerd and every plugin would) and
// does nothing for a spec directory.
func hideDir(dir string) error {
	target := dir
	if _, err := os.Stat(dir); err != nil {
		target = filepath.Dir(dir)
		if _, err := os.Stat(target); err != nil {
			if dir != pluginSocketDir {
				return nil
			}
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		}
	}
	if err := syscall.Mount("tmpfs", target, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode=0755,size=16m"); err != nil {
		return fmt.Errorf("hide %s behind a private tmpfs: %w", target, err)
	}
	return os.MkdirAll(dir, 0o755)
}
