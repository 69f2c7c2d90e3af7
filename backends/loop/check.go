package loop

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/blockvol/blockvol/backends"
	"golang.org/x/sys/unix"
)

var _ backends.Checker = (*Backend)(nil)

// Check implements backends.Checker: the data directory is a writable
// directory and the kernel's loop driver is there.
func (b *Backend) Check(ctx context.Context) error {
	return checker{dataDir: b.dir, devRoot: b.dev}.Check(ctx)
}

// NewChecker returns the Check of a loop backend configured with cfg
// without building the backend: unlike New it creates no directory and
// sweeps no debris, so `blockvol doctor` can run beside a serving plugin.
func NewChecker(cfg Config) backends.Checker {
	if cfg.DevRoot == "" {
		cfg.DevRoot = "/dev"
	}
	return checker{dataDir: cfg.DataDir, devRoot: cfg.DevRoot}
}

type checker struct {
	dataDir string
	devRoot string
}

func (c checker) Check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var errs []error
	if err := checkDataDir(c.dataDir); err != nil {
		errs = append(errs, err)
	}
	ctl := filepath.Join(c.devRoot, "loop-control")
	if fi, err := os.Stat(ctl); err != nil || fi.Mode()&fs.ModeCharDevice == 0 {
		errs = append(errs, fmt.Errorf("the kernel's loop driver is not available (no character device %s): run `modprobe loop`, or use a kernel with CONFIG_BLK_DEV_LOOP", ctl))
	}
	return errors.Join(errs...)
}

// checkDataDir accepts a writable directory, or a missing one whose nearest
// existing ancestor is a writable directory (New creates it).
func checkDataDir(dir string) error {
	if dir == "" || !filepath.IsAbs(dir) {
		return fmt.Errorf("data directory %q is not an absolute path", dir)
	}
	p := dir
	for {
		fi, err := os.Stat(p)
		if (errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR)) && filepath.Dir(p) != p {
			p = filepath.Dir(p)
			continue
		}
		if err != nil {
			return fmt.Errorf("data directory %s: %w", dir, err)
		}
		if !fi.IsDir() {
			return fmt.Errorf("data directory %s: %s is not a directory", dir, p)
		}
		break
	}
	if err := unix.Access(p, unix.W_OK|unix.X_OK); err != nil {
		if p == dir {
			return fmt.Errorf("data directory %s is not writable: %w", dir, err)
		}
		return fmt.Errorf("data directory %s does not exist and cannot be created: %s is not writable: %w", dir, p, err)
	}
	return nil
}
