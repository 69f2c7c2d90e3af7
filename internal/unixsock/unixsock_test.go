package unixsock

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockvol/blockvol/internal/testenv"
)

func TestListen(t *testing.T) {
	testenv.RequireRoot(t) // chown to root
	dir := t.TempDir()
	sock := filepath.Join(dir, "sub", "s.sock")
	l, err := Listen(sock, 0o600, 0)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode: %v, %v", fi, err)
	}
	// A live socket is not taken over.
	if _, err := Listen(sock, 0o600, 0); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second Listen on a live socket = %v", err)
	}
	// A dead one is replaced.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	l, err = Listen(sock, 0o600, 0)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	l.Close()
	// Anything else is left alone.
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(file, 0o600, 0); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen over a regular file = %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Fatal("Listen removed a file that is not a socket")
	}
}
