package vm

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ErrMissing wraps the errors of FindKernel and FindQEMU when the kernel or
// qemu is not installed: the only reason for the VM tests to skip.
var ErrMissing = errors.New("not installed (run test/vm/setup.sh as root)")

// DefaultCacheDir holds the kernels extracted by setup.sh and the console
// logs of the runs. $BLOCKVOL_VM_CACHE overrides it.
const DefaultCacheDir = "/var/tmp/blockvol-vm"

// CacheDir returns $BLOCKVOL_VM_CACHE or DefaultCacheDir.
func CacheDir() string {
	if d := os.Getenv("BLOCKVOL_VM_CACHE"); d != "" {
		return d
	}
	return DefaultCacheDir
}

// Kernel is a Debian cloud kernel as setup.sh extracts it:
//
//	Dir/vmlinuz
//	Dir/lib/modules/<Release>/...   with modules.dep
//	Dir/release                     <Release>
type Kernel struct {
	Dir     string
	Release string // e.g. "6.1.0-56-cloud-amd64"
}

// Image is the path of the kernel image.
func (k Kernel) Image() string { return filepath.Join(k.Dir, "vmlinuz") }

// ModuleDir is the directory of the kernel's modules.
func (k Kernel) ModuleDir() string { return filepath.Join(k.Dir, "lib", "modules", k.Release) }

// FindKernel returns the kernel in $BLOCKVOL_VM_KERNEL (a directory laid
// out as Kernel describes) or, by default, CacheDir()/kernel/current.
func FindKernel() (Kernel, error) {
	dir := os.Getenv("BLOCKVOL_VM_KERNEL")
	if dir == "" {
		dir = filepath.Join(CacheDir(), "kernel", "current")
	}
	resolved, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return Kernel{}, fmt.Errorf("VM kernel %s: %w", dir, ErrMissing)
	}
	b, err := os.ReadFile(filepath.Join(resolved, "release"))
	if err != nil {
		return Kernel{}, fmt.Errorf("VM kernel %s has no release file: %w", dir, ErrMissing)
	}
	k := Kernel{Dir: resolved, Release: strings.TrimSpace(string(b))}
	for _, p := range []string{k.Image(), filepath.Join(k.ModuleDir(), "modules.dep")} {
		if _, err := os.Stat(p); err != nil {
			return Kernel{}, fmt.Errorf("VM kernel %s is incomplete (%v): %w", dir, err, ErrMissing)
		}
	}
	return k, nil
}

// FindQEMU returns $BLOCKVOL_VM_QEMU or qemu-system-x86_64 from PATH.
func FindQEMU() (string, error) {
	if q := os.Getenv("BLOCKVOL_VM_QEMU"); q != "" {
		return q, nil
	}
	q, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return "", fmt.Errorf("qemu-system-x86_64: %w", ErrMissing)
	}
	return q, nil
}
