package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// GuestOptions configures BuildGuest.
type GuestOptions struct {
	Kernel Kernel
	// Dir receives the static binaries and the initramfs.
	Dir string
	// ModuleRoot is the repository root; "" finds go.mod above the working
	// directory.
	ModuleRoot string
	// ExtraModules are loaded besides Modules (e.g. virtio_net for a guest
	// with a network device).
	ExtraModules []string
	// Files are extra files (path in the guest -> content), mode 0600.
	Files map[string][]byte
}

// Guest is a built initramfs.
type Guest struct {
	Initrd string // uncompressed newc cpio
	Size   int64
	// GoBuild and Pack are the times spent compiling and assembling.
	GoBuild, Pack time.Duration
}

// Programs are the host programs copied into the guest with their
// libraries: the target, the initiator, the filesystem tools blockvol runs,
// udev for the /dev/disk/by-path links, and the tools of the iscsitarget
// backend's target-host helper. Busybox provides everything else.
var Programs = []string{
	"tgtd", "tgtadm", "iscsid", "iscsiadm",
	"mke2fs", "e2fsck", "mkfs.xfs", "blkid", "wipefs", "losetup", "blockdev",
	"resize2fs", "xfs_growfs", // growing a mounted filesystem (Resize, CSI expansion)
	"tune2fs", "xfs_db", // a clone's new filesystem UUID
	"fsfreeze", // util-linux's, not busybox's: a snapshot's freeze
	"mount", "umount", "udevadm",
	// The iscsitarget backend's helper script and lock on the target
	// host expect coreutils and util-linux, not busybox's variants.
	"flock", "timeout", "truncate", "mktemp", "sync", "cat", "rm", "mv",
	// dm-multipath (the multi-host tests' multipath scenario).
	"multipathd", "multipath",
}

// multipathPlugins is where multipath-tools keeps the path checkers and
// prioritizers multipathd loads at run time (Debian 12).
const multipathPlugins = "/lib/multipath"

// multipathModules are the kernel modules of dm-multipath.
var multipathModules = []string{"dm_multipath", "dm_service_time", "dm_round_robin"}

// dlopenLibs are libraries that programs load at run time, which ldd
// cannot see: glibc loads libgcc_s for pthread_cancel (tgtd cancels its
// backing-store threads when a LUN is deleted, and aborts without it).
var dlopenLibs = []string{"/lib/x86_64-linux-gnu/libgcc_s.so.1"}

// Modules are the kernel modules the guest loads (with their dependencies).
// ext4 and crc32c are built into Debian's cloud kernel.
var Modules = []string{"loop", "scsi_transport_iscsi", "iscsi_tcp", "sd_mod", "xfs", "ext4"}

// HookedPrograms are the programs the guest can wrap with a kill hook (see
// test/vm/guest/hook.go): /opt/vmtest/hookbin/<name> is the guest driver
// itself, first on the plugin's PATH.
var HookedPrograms = []string{"iscsiadm", "losetup", "mkfs.ext4", "mkfs.xfs", "blkid", "wipefs", "tgtadm"}

// udevRules give /dev/disk/by-path and by-uuid; nothing else is needed.
var udevRules = []string{"50-udev-default.rules", "60-block.rules", "60-persistent-storage.rules"}

// initScript is the guest's /init: mount the API filesystems, run the
// guest driver, report its status through isa-debug-exit, power off.
const initScript = `#!/bin/sh
export PATH=/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/lock /dev/pts /dev/shm
mount -t tmpfs -o size=900m,mode=755 tmpfs /srv
/usr/bin/vmguest
rc=$?
[ $rc -eq 0 ] || echo "VMTEST EXIT $rc"
[ $rc -eq 0 ] && /usr/bin/vmguest exit 0 || /usr/bin/vmguest exit 1
poweroff -f
`

// BuildGuest compiles blockvol and the guest driver statically and packs
// them with the guest's programs, modules and configuration into
// opts.Dir/initramfs.cpio.
func BuildGuest(ctx context.Context, opts GuestOptions) (Guest, error) {
	var g Guest
	root := opts.ModuleRoot
	if root == "" {
		var err error
		if root, err = moduleRoot(); err != nil {
			return g, err
		}
	}
	bin := filepath.Join(opts.Dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return g, err
	}
	start := time.Now()
	if err := goBuild(ctx, root, bin, "./cmd/blockvol", "./test/vm/guest"); err != nil {
		return g, err
	}
	g.GoBuild = time.Since(start)

	start = time.Now()
	im := NewInitramfs()
	for _, p := range Programs {
		path, err := lookPath(p)
		if err != nil {
			return g, fmt.Errorf("guest program %s: %w (run test/vm/setup.sh)", p, err)
		}
		if err := im.Program(ctx, path); err != nil {
			return g, err
		}
	}
	plugins, _ := filepath.Glob(filepath.Join(multipathPlugins, "*.so"))
	if len(plugins) == 0 {
		return g, fmt.Errorf("no multipathd plugins in %s (run test/vm/setup.sh)", multipathPlugins)
	}
	for _, p := range plugins {
		if err := im.Program(ctx, p); err != nil {
			return g, err
		}
	}
	for _, l := range dlopenLibs {
		if err := im.Copy(l, l); err != nil {
			return g, fmt.Errorf("guest library: %w", err)
		}
	}
	// mke2fs acts on its argv[0]: mkfs.ext4 must be a link to it.
	im.Symlink("usr/sbin/mkfs.ext4", "mke2fs")
	im.Symlink("usr/lib/systemd/systemd-udevd", "../../bin/udevadm")
	if err := im.Program(ctx, "/usr/lib/udev/scsi_id"); err != nil {
		return g, err
	}
	for _, r := range udevRules {
		if err := im.Copy("usr/lib/udev/rules.d/"+r, "/usr/lib/udev/rules.d/"+r); err != nil {
			return g, err
		}
	}
	if err := im.Copy("usr/bin/blockvol", filepath.Join(bin, "blockvol")); err != nil {
		return g, err
	}
	if err := im.Copy("usr/bin/vmguest", filepath.Join(bin, "guest")); err != nil {
		return g, err
	}
	for _, h := range HookedPrograms {
		im.Symlink("opt/vmtest/hookbin/"+h, "/usr/bin/vmguest")
	}
	busybox, err := lookPath("busybox")
	if err != nil {
		return g, fmt.Errorf("busybox: %w (install busybox-static)", err)
	}
	if err := im.Copy("usr/bin/busybox", busybox); err != nil {
		return g, err
	}
	applets, err := exec.CommandContext(ctx, busybox, "--list").Output()
	if err != nil {
		return g, fmt.Errorf("busybox --list: %w", err)
	}
	for _, a := range strings.Fields(string(applets)) {
		if !im.Has("usr/bin/"+a) && !im.Has("usr/sbin/"+a) {
			im.Symlink("usr/bin/"+a, "busybox")
		}
	}
	mods, err := im.Modules(opts.Kernel, append(slices.Clone(Modules), opts.ExtraModules...)...)
	if err != nil {
		return g, err
	}
	im.File("etc/vmtest/modules", []byte(strings.Join(mods, "\n")+"\n"), 0o644)
	if err := guestConfig(im); err != nil {
		return g, err
	}
	for p, data := range opts.Files {
		im.File(p, data, 0o600)
	}
	im.File("init", []byte(initScript), 0o755)

	g.Initrd = filepath.Join(opts.Dir, "initramfs.cpio")
	if err := im.WriteFile(g.Initrd); err != nil {
		return g, err
	}
	fi, err := os.Stat(g.Initrd)
	if err != nil {
		return g, err
	}
	g.Size = fi.Size()
	g.Pack = time.Since(start)
	return g, nil
}

// debianIscsidConf are the settings of Debian 12's /etc/iscsi/iscsid.conf
// (open-iscsi 2.1.8), used when that file cannot be read.
const debianIscsidConf = `iscsid.startup = /bin/true
node.startup = manual
node.leading_login = No
node.session.timeo.replacement_timeout = 120
node.conn[0].timeo.login_timeout = 15
node.conn[0].timeo.logout_timeout = 15
node.conn[0].timeo.noop_out_interval = 5
node.conn[0].timeo.noop_out_timeout = 5
node.session.err_timeo.abort_timeout = 15
node.session.err_timeo.lu_reset_timeout = 30
node.session.err_timeo.tgt_reset_timeout = 30
node.session.err_timeo.host_reset_timeout = 60
node.session.initial_login_retry_max = 8
node.session.cmds_max = 128
node.session.queue_depth = 32
node.session.xmit_thread_priority = -20
node.session.iscsi.InitialR2T = No
node.session.iscsi.ImmediateData = Yes
node.session.iscsi.FirstBurstLength = 262144
node.session.iscsi.MaxBurstLength = 16776192
node.conn[0].iscsi.MaxRecvDataSegmentLength = 262144
node.conn[0].iscsi.MaxXmitDataSegmentLength = 0
discovery.sendtargets.iscsi.MaxRecvDataSegmentLength = 32768
node.session.nr_sessions = 1
node.session.reopen_max = 0
node.session.iscsi.FastAbort = Yes
node.session.scan = auto
`

var startupRE = regexp.MustCompile(`(?m)^\s*iscsid\.startup\s*=.*$`)

// guestConfig writes /etc: users and groups for udev, mke2fs.conf, and the
// host's iscsid.conf with one change: iscsiadm must not try to start iscsid
// through systemctl (the guest starts it).
func guestConfig(im *Initramfs) error {
	im.File("etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	var groups strings.Builder
	for i, g := range []string{"root", "disk", "tty", "kmem", "input", "video", "audio", "cdrom", "dialout", "tape", "kvm", "render", "sgx", "lp", "floppy"} {
		fmt.Fprintf(&groups, "%s:x:%d:\n", g, i*7)
	}
	im.File("etc/group", []byte(groups.String()), 0o644)
	im.File("etc/hosts", []byte("127.0.0.1 localhost\n"), 0o644)
	if err := im.Copy("etc/mke2fs.conf", "/etc/mke2fs.conf"); err != nil {
		return err
	}
	conf, err := os.ReadFile("/etc/iscsi/iscsid.conf")
	switch {
	case errors.Is(err, os.ErrPermission):
		conf = []byte(debianIscsidConf) // 0600: not readable by a non-root test
	case err != nil:
		return fmt.Errorf("iscsid.conf: %w (install open-iscsi)", err)
	}
	conf = startupRE.ReplaceAll(conf, []byte("iscsid.startup = /bin/true"))
	im.File("etc/iscsi/iscsid.conf", conf, 0o600)
	im.File("etc/iscsi/initiatorname.iscsi", []byte("InitiatorName=iqn.2024-01.test.vm:initiator\n"), 0o600)
	im.Dir("etc/iscsi/nodes")
	im.Dir("etc/iscsi/send_targets")
	im.Dir("etc/udev")
	im.File("etc/udev/udev.conf", []byte("udev_log=err\n"), 0o644)
	return nil
}

// lookPath finds a program also in the sbin directories, which a test's
// PATH may lack.
func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", exec.ErrNotFound
}

// goBuild builds static linux/amd64 binaries of pkgs into dir.
func goBuild(ctx context.Context, root, dir string, pkgs ...string) error {
	goBin, err := exec.LookPath("go") // go test puts its GOROOT/bin first on PATH
	if err != nil {
		return fmt.Errorf("go toolchain: %w", err)
	}
	args := append([]string{"build", "-trimpath", "-o", dir + "/"}, pkgs...)
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// moduleRoot finds the directory holding go.mod above the working directory.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}
