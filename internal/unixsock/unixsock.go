// Package unixsock binds the unix sockets blockvol serves (the Docker
// plugin socket, the CSI socket).
package unixsock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Listen binds a unix socket at path with mode, owned by root and gid
// (gid < 0: owned by whoever runs it, not changed). A
// socket file left by a dead process is replaced; one that a live process
// still answers on is not, nor is anything at path that is not a socket.
func Listen(path string, mode os.FileMode, gid int) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("socket %s: something that is not a socket is in the way; remove it by hand", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("socket %s is in use by another running process; stop it first", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	err = os.Chmod(path, mode)
	if gid >= 0 {
		err = errors.Join(err, os.Chown(path, 0, gid))
	}
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("socket %s permissions: %w", path, err)
	}
	return l, nil
}
