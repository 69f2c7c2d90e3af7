package loop

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// devWithLoopControl returns a device root holding loop-control, or skips.
func devWithLoopControl(t *testing.T) string {
	t.Helper()
	fi, err := os.Stat("/dev/loop-control")
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		t.Skip("no /dev/loop-control on this host")
	}
	return "/dev"
}

func TestCheckDataDir(t *testing.T) {
	dev := devWithLoopControl(t)
	root := t.TempDir()
	file := filepath.Join(root, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, dir, want string
	}{
		{"existing", root, ""},
		{"created by New", filepath.Join(root, "a", "b"), ""},
		{"a file", file, "is not a directory"},
		{"under a file", filepath.Join(file, "loop"), "is not a directory"},
		{"relative", "var/lib/blockvol", "is not an absolute path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := NewChecker(Config{DataDir: tc.dir, DevRoot: dev}).Check(context.Background())
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Check: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Check = %v; want an error containing %q", err, tc.want)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(root, "a")); !os.IsNotExist(err) {
		t.Errorf("Check created a directory (%v)", err)
	}
}

func TestCheckUnwritableDataDir(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root may write anywhere")
	}
	dev := devWithLoopControl(t)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod(dir, 0o700) })
	err := NewChecker(Config{DataDir: filepath.Join(dir, "loop"), DevRoot: dev}).Check(context.Background())
	if err == nil || !strings.Contains(err.Error(), "cannot be created") {
		t.Fatalf("Check = %v; want cannot be created", err)
	}
}

func TestCheckNoLoopDriver(t *testing.T) {
	err := NewChecker(Config{DataDir: t.TempDir(), DevRoot: t.TempDir()}).Check(context.Background())
	if err == nil || !strings.Contains(err.Error(), "modprobe loop") {
		t.Fatalf("Check = %v; want advice to modprobe loop", err)
	}
}

func TestBackendCheck(t *testing.T) {
	e := newEnv(t)
	e.b.dev = devWithLoopControl(t)
	if err := e.b.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
}
