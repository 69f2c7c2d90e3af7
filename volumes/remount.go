package volumes

import (
	"context"
	"log/slog"

	"github.com/blockvol/blockvol/backends"
)

// A volume mounted again soon after its last user left — `docker run`
// mounts a volume to copy the image's files into it, unmounts it, and
// mounts it again for the container — is not probed and checked again
// when nothing can have changed it in between: this process mounted it
// and unmounted its filesystem cleanly, the detach that followed left
// nothing holding it, its backend proves its data unchanged since
// (backends.UnchangedProver), and its superblock says clean
// (Filesystem.Clean). Anything less, and Prepare runs as on any mount.

// mountedFS is what this process knows of the filesystem it mounted on a
// volume: its type, and whether its teardown went cleanly since.
type mountedFS struct {
	fstype string
	clean  bool
}

// noteMounted records what this process knows of the filesystem on name:
// fstype mounted (clean false), or unmounted and detached without an
// error since (clean true).
func (d *Core) noteMounted(name string, m mountedFS) {
	d.fsMu.Lock()
	d.fsOf[name] = m
	d.fsMu.Unlock()
}

// takeMounted returns and forgets what noteMounted recorded of name.
func (d *Core) takeMounted(name string) mountedFS {
	d.fsMu.Lock()
	defer d.fsMu.Unlock()
	m := d.fsOf[name]
	delete(d.fsOf, name)
	return m
}

// reusable returns the type of the filesystem on r.Device when it can be
// mounted as it is, without Prepare (see above), or "". Whatever it finds,
// the note of the teardown is used up.
func (d *Core) reusable(ctx context.Context, log *slog.Logger, r record, be backends.Backend) string {
	m := d.takeMounted(r.Name)
	up, ok := be.(backends.UnchangedProver)
	if !m.clean || !ok {
		return ""
	}
	same, err := up.ProvenUnchanged(ctx, r.Name, r.Device)
	if err != nil {
		log.Warn("cannot tell whether the volume changed since its last unmount here; checking it", "err", err)
	}
	if !same {
		return ""
	}
	clean, err := d.cfg.FS.Clean(r.Device, m.fstype)
	if err != nil {
		log.Warn("cannot read the volume's superblock; checking it", "err", err)
	}
	if !clean {
		return ""
	}
	log.Debug("filesystem unchanged since its clean unmount here; mounted without a new probe and check", "fstype", m.fstype)
	return m.fstype
}
