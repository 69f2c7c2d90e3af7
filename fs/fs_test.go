package fs

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/internal/sentinel"
)

const dev = "/dev/loop3"

var (
	blkidArgv    = []string{"blkid", "-p", "-o", "export", dev}
	mkfsExt4Argv = []string{"mkfs.ext4", "-q", "-F", "-m", "0", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", dev}
	mkfsXFSArgv  = []string{"mkfs.xfs", "-q", "-K", dev}
	e2fsckArgv   = []string{"e2fsck", "-p", dev}
	wipefsArgv   = []string{"wipefs", "-a", dev}
)

func blkidFound(lines ...string) hostexec.Call {
	return hostexec.Call{Argv: blkidArgv, Stdout: "DEVNAME=" + dev + "\n" + strings.Join(lines, "\n") + "\n"}
}

var (
	blkidBlank = hostexec.Call{Argv: blkidArgv, Code: 2}
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestPrepare(t *testing.T) {
	tests := []struct {
		name      string
		fstype    string
		overwrite bool
		calls     []hostexec.Call
		readOnly  bool // the kernel has the device read-only
		claimed   bool // another holds the device (mounted elsewhere)
		wantType  string
		wantFmt   bool
		wantErrIs error    // nil: no error expected unless wantErr is set
		wantErr   []string // substrings of the error message
	}{
		{
			name: "blank to ext4", fstype: "ext4",
			calls:    []hostexec.Call{blkidBlank, {Argv: mkfsExt4Argv}},
			wantType: "ext4", wantFmt: true,
		},
		{
			name: "blank to xfs", fstype: "xfs",
			calls:    []hostexec.Call{blkidBlank, {Argv: mkfsXFSArgv}},
			wantType: "xfs", wantFmt: true,
		},
		{
			name: "ext4 present is checked then used", fstype: "ext4",
			calls: []hostexec.Call{
				blkidFound("UUID=1b4e28ba-2fa1-11d2-883f-0016d3cca427", "BLOCK_SIZE=4096", "TYPE=ext4", "USAGE=filesystem"),
				{Argv: e2fsckArgv},
			},
			wantType: "ext4",
		},
		{
			name: "ext4 present, e2fsck corrected errors", fstype: "ext4",
			calls:    []hostexec.Call{blkidFound("TYPE=ext4"), {Argv: e2fsckArgv, Code: 1}},
			wantType: "ext4",
		},
		{
			name: "ext4 present, xfs requested: ext4 kept", fstype: "xfs",
			calls:    []hostexec.Call{blkidFound("TYPE=ext4"), {Argv: e2fsckArgv}},
			wantType: "ext4",
		},
		{
			name: "xfs present, no overwrite", fstype: "xfs",
			calls:    []hostexec.Call{blkidFound("UUID=x", "TYPE=xfs", "USAGE=filesystem")},
			wantType: "xfs",
		},
		{
			name: "xfs present, ext4 requested: xfs kept, no fsck", fstype: "ext4",
			calls:    []hostexec.Call{blkidFound("TYPE=xfs")},
			wantType: "xfs",
		},
		{
			name: "overwrite ext4 with xfs", fstype: "xfs", overwrite: true,
			calls:    []hostexec.Call{blkidFound("TYPE=ext4"), {Argv: wipefsArgv}, {Argv: mkfsXFSArgv}},
			wantType: "xfs", wantFmt: true,
		},
		{
			name: "overwrite xfs with ext4", fstype: "ext4", overwrite: true,
			calls:    []hostexec.Call{blkidFound("TYPE=xfs"), {Argv: wipefsArgv}, {Argv: mkfsExt4Argv}},
			wantType: "ext4", wantFmt: true,
		},
		{
			name: "overwrite blank device is a plain format", fstype: "ext4", overwrite: true,
			calls:    []hostexec.Call{blkidBlank, {Argv: mkfsExt4Argv}},
			wantType: "ext4", wantFmt: true,
		},
		{
			name: "dos partition table refused", fstype: "ext4",
			calls:     []hostexec.Call{blkidFound("PTUUID=0c8ea87c", "PTTYPE=dos")},
			wantErrIs: ErrForeignSignature,
			wantErr:   []string{"device /dev/loop3 holds a dos partition table", "never overwrites"},
		},
		{
			name: "gpt partition table refused even with overwrite", fstype: "xfs", overwrite: true,
			calls:     []hostexec.Call{blkidFound("PTUUID=abc", "PTTYPE=gpt")},
			wantErrIs: ErrForeignSignature,
			wantErr:   []string{"/dev/loop3", "gpt partition table"},
		},
		{
			name: "LVM2_member refused", fstype: "ext4",
			calls:     []hostexec.Call{blkidFound("UUID=abc", "VERSION=LVM2 001", "TYPE=LVM2_member", "USAGE=raid")},
			wantErrIs: ErrForeignSignature,
			wantErr:   []string{"/dev/loop3", "LVM2_member"},
		},
		{
			name: "LUKS refused with overwrite", fstype: "ext4", overwrite: true,
			calls:     []hostexec.Call{blkidFound("TYPE=crypto_LUKS", "USAGE=crypto")},
			wantErrIs: ErrForeignSignature,
			wantErr:   []string{"crypto_LUKS"},
		},
		{
			name: "swap refused", fstype: "xfs",
			calls:     []hostexec.Call{blkidFound("TYPE=swap")},
			wantErrIs: ErrForeignSignature,
			wantErr:   []string{"swap"},
		},
		{
			name: "ext4 inside a partition table refused", fstype: "ext4", overwrite: true,
			calls:     []hostexec.Call{blkidFound("PTTYPE=dos", "TYPE=ext4")},
			wantErrIs: ErrForeignSignature,
			wantErr:   []string{"a dos partition table and an ext4 signature"},
		},
		{
			name: "ambivalent probe refused", fstype: "ext4",
			calls:     []hostexec.Call{{Argv: blkidArgv, Code: 8}},
			wantErrIs: ErrForeignSignature,
			wantErr:   []string{"/dev/loop3", "conflicting"},
		},
		{
			name: "probe succeeds without TYPE refused", fstype: "ext4",
			calls:     []hostexec.Call{{Argv: blkidArgv, Stdout: "DEVNAME=/dev/loop3\nPART_ENTRY_SCHEME=dos\n"}},
			wantErrIs: ErrForeignSignature,
		},
		{
			name: "e2fsck exit 4 asks for a human", fstype: "ext4",
			calls:   []hostexec.Call{blkidFound("TYPE=ext4"), {Argv: e2fsckArgv, Code: 4, Stderr: "UNEXPECTED INCONSISTENCY"}},
			wantErr: []string{"/dev/loop3", "e2fsck /dev/loop3` by hand", "UNEXPECTED INCONSISTENCY"},
		},
		{
			name: "e2fsck exit 2 is an error too", fstype: "ext4",
			calls:   []hostexec.Call{blkidFound("TYPE=ext4"), {Argv: e2fsckArgv, Code: 2}},
			wantErr: []string{"e2fsck"},
		},
		{
			name: "read-only blank device not formatted", fstype: "ext4",
			calls:     []hostexec.Call{blkidBlank},
			readOnly:  true,
			wantErrIs: ErrReadOnly,
			wantErr:   []string{"/dev/loop3", "read-only"},
		},
		{
			name: "read-only device not wiped", fstype: "ext4", overwrite: true,
			calls:     []hostexec.Call{blkidFound("TYPE=xfs")},
			readOnly:  true,
			wantErrIs: ErrReadOnly,
		},
		{
			name: "mkfs failure names the device", fstype: "xfs",
			calls:   []hostexec.Call{blkidBlank, {Argv: mkfsXFSArgv, Code: 1, Stderr: "Filesystem must be larger than 300MB."}},
			wantErr: []string{"/dev/loop3", "xfs", "300MB"},
		},
		{
			name: "wipefs failure stops before mkfs", fstype: "ext4", overwrite: true,
			calls:   []hostexec.Call{blkidFound("TYPE=ext4"), {Argv: wipefsArgv, Code: 1, Stderr: "probing initialization failed"}},
			wantErr: []string{"wipe", "/dev/loop3"},
		},
		{
			name: "blkid failure is not blank", fstype: "ext4",
			calls:   []hostexec.Call{{Argv: blkidArgv, Code: 4, Stderr: "No such device"}},
			wantErr: []string{"probe device /dev/loop3", "No such device"},
		},
		{
			name: "ext4 in use elsewhere: used as it is, not checked", fstype: "ext4",
			calls:    []hostexec.Call{blkidFound("TYPE=ext4")},
			claimed:  true,
			wantType: "ext4",
		},
		{
			name: "xfs in use elsewhere, ext4 requested: xfs as it is", fstype: "ext4",
			calls:    []hostexec.Call{blkidFound("TYPE=xfs")},
			claimed:  true,
			wantType: "xfs",
		},
		{
			name: "in use: never wiped", fstype: "ext4", overwrite: true,
			calls:     []hostexec.Call{blkidFound("TYPE=ext4")},
			claimed:   true,
			wantErrIs: sentinel.ErrBusy,
			wantErr:   []string{"/dev/loop3", "in use", "never formats"},
		},
		{
			name: "in use and blank (a device-mapper map over it): never formatted", fstype: "xfs",
			calls:     []hostexec.Call{blkidBlank},
			claimed:   true,
			wantErrIs: sentinel.ErrBusy,
		},
		{
			name: "unsupported type runs nothing", fstype: "btrfs",
			wantErr: []string{"unsupported filesystem type \"btrfs\""},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := hostexec.NewFake(t, tt.calls...)
			f := &FS{Run: fake, Mounter: &fakeMounter{t: t, readOnly: tt.readOnly, claimed: tt.claimed}, Log: quietLog()}
			gotType, gotFmt, err := f.Prepare(context.Background(), dev, tt.fstype, tt.overwrite)
			fake.Done()
			wantFail := tt.wantErrIs != nil || tt.wantErr != nil
			if !wantFail {
				if err != nil {
					t.Fatalf("Prepare: %v", err)
				}
				if gotType != tt.wantType || gotFmt != tt.wantFmt {
					t.Fatalf("Prepare = (%q, %v), want (%q, %v)", gotType, gotFmt, tt.wantType, tt.wantFmt)
				}
				return
			}
			if err == nil {
				t.Fatalf("Prepare = (%q, %v, nil), want an error", gotType, gotFmt)
			}
			if tt.wantErrIs != nil && !errors.Is(err, tt.wantErrIs) {
				t.Errorf("error %q does not wrap %v", err, tt.wantErrIs)
			}
			if tt.wantErrIs != ErrForeignSignature && errors.Is(err, ErrForeignSignature) {
				t.Errorf("error %q wraps ErrForeignSignature", err)
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

func TestPrepareE2fsckExitCodeKept(t *testing.T) {
	fake := hostexec.NewFake(t, blkidFound("TYPE=ext4"), hostexec.Call{Argv: e2fsckArgv, Code: 4})
	f := &FS{Run: fake, Mounter: &fakeMounter{t: t}, Log: quietLog()}
	_, _, err := f.Prepare(context.Background(), dev, "ext4", false)
	fake.Done()
	if got := hostexec.ExitCode(err); got != 4 {
		t.Fatalf("ExitCode(%v) = %d, want 4", err, got)
	}
}

func TestPrepareCanceledContext(t *testing.T) {
	fake := hostexec.NewFake(t)
	f := &FS{Run: fake, Log: quietLog()}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, _, err := f.Prepare(ctx, dev, "ext4", false)
	fake.Done()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Prepare with canceled context: %v, want context.Canceled", err)
	}
}

func TestMinSizeBytes(t *testing.T) {
	for fstype, want := range map[string]int64{"xfs": 300 << 20, "ext4": 16 << 20, "btrfs": 0} {
		if got := MinSizeBytes(fstype); got != want {
			t.Errorf("MinSizeBytes(%q) = %d, want %d", fstype, got, want)
		}
	}
	for _, fstype := range SupportedFSTypes {
		if MinSizeBytes(fstype) == 0 || mkfsArgv(fstype, dev) == nil {
			t.Errorf("supported type %q has no minimum size or mkfs command", fstype)
		}
	}
}
