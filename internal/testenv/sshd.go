package testenv

import (
	"os"
	"os/user"
	"path/filepath"
)

// QuietShell returns argv (a test's sshd) wrapped to run in a mount
// namespace of its own in which root's ~/.bashrc, if there is one, reads
// as an empty file (emptyFile, which it creates). bash, the shell of each
// SSH session, reads ~/.bashrc even for a command run over SSH, and a
// machine's own (a `pyenv init`, say) can cost seconds per command under
// load: the test measures blockvol, not the machine's shell setup. The
// machine's file is never changed, and nothing outside the namespace sees
// the bind mount.
func QuietShell(emptyFile string, argv ...string) ([]string, error) {
	if err := os.WriteFile(emptyFile, nil, 0o644); err != nil {
		return nil, err
	}
	home := "/root"
	if u, err := user.Lookup("root"); err == nil && u.HomeDir != "" {
		home = u.HomeDir
	}
	const script = `if [ -f "$2" ] && [ ! -L "$2" ]; then mount --bind "$1" "$2" || exit 1; fi; shift 2; exec "$@"`
	return append([]string{"unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", emptyFile, filepath.Join(home, ".bashrc")}, argv...), nil
}
