package fs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/blockvol/blockvol/internal/mounttable"
	"github.com/blockvol/blockvol/internal/sentinel"
)

// mountCall is one call a fakeMounter received.
type mountCall struct {
	Source, Target, FSType string
	Flags                  uintptr
	Data                   string
}

// fakeMounter records calls and answers with scripted errors.
type fakeMounter struct {
	t          *testing.T
	mounts     []mountCall
	unmounts   []string
	unmountFl  []int
	mountErr   error
	unmountErr error
	readOnly   bool
	claimed    bool
}

func (m *fakeMounter) ReadOnly(dev string) (bool, error) { return m.readOnly, nil }
func (m *fakeMounter) Claimed(dev string) (bool, error)  { return m.claimed, nil }

func (m *fakeMounter) Mount(source, target, fstype string, flags uintptr, data string) error {
	m.mounts = append(m.mounts, mountCall{source, target, fstype, flags, data})
	return m.mountErr
}

func (m *fakeMounter) Unmount(target string, flags int) error {
	m.unmounts = append(m.unmounts, target)
	m.unmountFl = append(m.unmountFl, flags)
	return m.unmountErr
}

// emptyMountInfo writes a mount table with only / mounted.
func emptyMountInfo(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mountinfo")
	if err := os.WriteFile(p, []byte("22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMountFlags(t *testing.T) {
	const base = syscall.MS_NOSUID | syscall.MS_NODEV
	tests := []struct {
		name      string
		opts      []string
		wantFlags uintptr
		wantData  string
	}{
		{"no options", nil, base, ""},
		{"noatime", []string{"noatime"}, base | syscall.MS_NOATIME, ""},
		{"nodiratime relatime", []string{"nodiratime", "relatime"}, base | syscall.MS_NODIRATIME | syscall.MS_RELATIME, ""},
		{"strictatime lazytime", []string{"strictatime", "lazytime"}, base | syscall.MS_STRICTATIME | 1<<25, ""},
		{"sync dirsync", []string{"sync", "dirsync"}, base | syscall.MS_SYNCHRONOUS | syscall.MS_DIRSYNC, ""},
		{"discard is data", []string{"discard"}, base, "discard"},
		{"nodiscard and flags", []string{"noatime", "nodiscard", "sync"}, base | syscall.MS_NOATIME | syscall.MS_SYNCHRONOUS, "nodiscard"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &fakeMounter{t: t}
			f := &FS{Mounter: m, Log: quietLog(), MountInfoPath: emptyMountInfo(t)}
			target := filepath.Join(t.TempDir(), "a", "b", "mnt")
			if err := f.Mount(context.Background(), dev, target+"/", "ext4", tt.opts); err != nil {
				t.Fatalf("Mount: %v", err)
			}
			want := []mountCall{{dev, target, "ext4", tt.wantFlags, tt.wantData}}
			if len(m.mounts) != 1 || m.mounts[0] != want[0] {
				t.Fatalf("mount calls = %+v, want %+v", m.mounts, want)
			}
			st, err := os.Stat(target)
			if err != nil || !st.IsDir() {
				t.Fatalf("target not created: %v", err)
			}
			if perm := st.Mode().Perm(); perm&^0o755 != 0 {
				t.Errorf("target mode %v, want at most 0755", perm)
			}
		})
	}
}

func TestMountRefusals(t *testing.T) {
	mi := filepath.Join("testdata", "mountinfo")
	tests := []struct {
		name, dev, target string
		opts              []string
		mountErr          error
		wantErrIs         error
		wantErr           string
		wantMount         bool
	}{
		{name: "option outside allowlist", dev: dev, target: "/nonexistent/x", opts: []string{"exec"}, wantErrIs: ErrInvalidMountOption, wantErr: `"exec"`},
		{name: "suid never passes", dev: dev, target: "/nonexistent/x", opts: []string{"noatime", "suid"}, wantErrIs: ErrInvalidMountOption},
		{name: "contradicting options", dev: dev, target: "/nonexistent/x", opts: []string{"noatime", "strictatime"}, wantErrIs: ErrInvalidMountOption},
		{name: "relative target", dev: dev, target: "mnt", wantErr: "absolute"},
		{name: "empty device", dev: "", target: "/nonexistent/x", wantErr: "need a device"},
		{name: "other device mounted there", dev: "/dev/loop9", target: "/var/lib/blockvol/mounts/my volume", wantErr: "/dev/loop3 is already mounted"},
		{name: "same device already mounted", dev: "/dev/loop3", target: "/var/lib/blockvol/mounts/my volume/"},
		{name: "mount(2) error wrapped", dev: dev, target: "", mountErr: syscall.EPERM, wantErrIs: syscall.EPERM, wantErr: "/dev/loop3", wantMount: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &fakeMounter{t: t, mountErr: tt.mountErr}
			f := &FS{Mounter: m, Log: quietLog(), MountInfoPath: mi}
			target := tt.target
			if target == "" {
				target = filepath.Join(t.TempDir(), "mnt")
			}
			err := f.Mount(context.Background(), tt.dev, target, "ext4", tt.opts)
			if (len(m.mounts) == 1) != tt.wantMount {
				t.Errorf("mount calls = %+v, want mount called: %v", m.mounts, tt.wantMount)
			}
			if tt.wantErrIs == nil && tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Mount: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Mount succeeded, want an error")
			}
			if tt.wantErrIs != nil && !errors.Is(err, tt.wantErrIs) {
				t.Errorf("error %q does not wrap %v", err, tt.wantErrIs)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestMountCanceledContext(t *testing.T) {
	m := &fakeMounter{t: t}
	f := &FS{Mounter: m, Log: quietLog(), MountInfoPath: emptyMountInfo(t)}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := f.Mount(ctx, dev, filepath.Join(t.TempDir(), "m"), "ext4", nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Mount: %v, want context.Canceled", err)
	}
	if len(m.mounts) != 0 {
		t.Fatalf("mount called: %+v", m.mounts)
	}
}

func TestUnmount(t *testing.T) {
	tests := []struct {
		name      string
		err       error
		wantErrIs []error
	}{
		{name: "unmounted"},
		{name: "not a mount point is success", err: syscall.EINVAL},
		{name: "missing target is success", err: syscall.ENOENT},
		{name: "busy", err: syscall.EBUSY, wantErrIs: []error{sentinel.ErrBusy, syscall.EBUSY}},
		{name: "other error", err: syscall.EPERM, wantErrIs: []error{syscall.EPERM}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &fakeMounter{t: t, unmountErr: tt.err}
			f := &FS{Mounter: m, Log: quietLog()}
			err := f.Unmount(context.Background(), "/mnt/x/../vol/")
			if len(m.unmounts) != 1 || m.unmounts[0] != "/mnt/vol" || m.unmountFl[0] != 0x8 /* UMOUNT_NOFOLLOW */ {
				t.Fatalf("unmount calls = %q flags %v, want [/mnt/vol] [8]", m.unmounts, m.unmountFl)
			}
			if len(tt.wantErrIs) == 0 {
				if err != nil {
					t.Fatalf("Unmount: %v", err)
				}
				return
			}
			for _, want := range tt.wantErrIs {
				if !errors.Is(err, want) {
					t.Errorf("Unmount error %v does not wrap %v", err, want)
				}
			}
			if tt.err != syscall.EBUSY && errors.Is(err, sentinel.ErrBusy) {
				t.Errorf("Unmount error %v wraps sentinel.ErrBusy", err)
			}
			if !strings.Contains(err.Error(), "/mnt/vol") {
				t.Errorf("Unmount error %q does not name the target", err)
			}
		})
	}
}

func TestMountedDevice(t *testing.T) {
	f := &FS{MountInfoPath: filepath.Join("testdata", "mountinfo")}
	tests := map[string]string{
		"/":                                            "/dev/vda",
		"/var/lib/blockvol/mounts/my volume":           "/dev/loop3",
		"/var/lib/blockvol/mounts/my volume/":          "/dev/loop3",
		"/var/lib/blockvol/mounts/./my volume":         "/dev/loop3",
		"/var/lib/blockvol/mounts/my\\040volume":       "",
		"/var/lib/blockvol/mounts/my":                  "",
		"/var/lib/blockvol/mounts/tab\tand\\backslash": "/dev/loop4",
		"/srv/stacked":                                 "/dev/sdc", // the mount on top
		"/srv/bind dir":                                "/dev/disk/by-id/odd name",
		"/proc":                                        "proc",
		"/nothing/there":                               "",
	}
	for target, want := range tests {
		got, err := f.MountedDevice(target)
		if err != nil {
			t.Fatalf("MountedDevice(%q): %v", target, err)
		}
		if got != want {
			t.Errorf("MountedDevice(%q) = %q, want %q", target, got, want)
		}
	}
}

func TestMountedDeviceErrors(t *testing.T) {
	f := &FS{MountInfoPath: filepath.Join(t.TempDir(), "missing")}
	if _, err := f.MountedDevice("/x"); err == nil {
		t.Error("missing mount table: no error")
	}
	bad := filepath.Join(t.TempDir(), "bad")
	if err := os.WriteFile(bad, []byte("22 1 253:0 / / rw,relatime shared:1 ext4 /dev/vda rw\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f.MountInfoPath = bad
	if _, err := f.MountedDevice("/"); err == nil || !strings.Contains(err.Error(), "missing - separator") {
		t.Errorf("line without separator: %v, want a missing separator error", err)
	}
}

func TestReadMountTableFields(t *testing.T) {
	entries, err := mounttable.Read(filepath.Join("testdata", "mountinfo"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 7 {
		t.Fatalf("%d entries, want 7", len(entries))
	}
	e := entries[2]
	if e.Mountpoint != "/var/lib/blockvol/mounts/my volume" || e.Options != "rw,nosuid,nodev,noatime" || e.FSType != "ext4" || e.Source != "/dev/loop3" {
		t.Errorf("entry 2 = %+v", e)
	}
}
