package fs

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/blockvol/blockvol/internal/sentinel"
)

func TestParseMountOptions(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantBad string // option named in the error; "" for success
	}{
		{in: "", want: nil},
		{in: " , ,", want: nil},
		{in: "noatime", want: []string{"noatime"}},
		{in: "noatime,nodiratime,lazytime,discard,sync,dirsync", want: []string{"noatime", "nodiratime", "lazytime", "discard", "sync", "dirsync"}},
		{in: "relatime", want: []string{"relatime"}},
		{in: "strictatime,nodiscard", want: []string{"strictatime", "nodiscard"}},
		{in: " noatime , discard ,", want: []string{"noatime", "discard"}},
		{in: "noatime,noatime", want: []string{"noatime"}},
		{in: "suid", wantBad: `"suid"`},
		{in: "dev", wantBad: `"dev"`},
		{in: "exec", wantBad: `"exec"`},
		{in: "noexec", wantBad: `"noexec"`},
		{in: "ro", wantBad: `"ro"`},
		{in: "rw", wantBad: `"rw"`},
		{in: "remount", wantBad: `"remount"`},
		{in: "bind", wantBad: `"bind"`},
		{in: "nosuid", wantBad: `"nosuid"`},
		{in: "noatime,uid=0", wantBad: `"uid=0"`},
		{in: "NOATIME", wantBad: `"NOATIME"`},
		{in: "noatime=1", wantBad: `"noatime=1"`},
		{in: "discard,context=system_u:object_r:tmp_t:s0", wantBad: `"context=system_u:object_r:tmp_t:s0"`},
		{in: "no atime", wantBad: `"no atime"`},
		{in: "noatime,relatime", wantBad: "noatime and relatime"},
		{in: "strictatime,noatime", wantBad: "strictatime and noatime"},
		{in: "discard,nodiscard", wantBad: "discard and nodiscard"},
	}
	for _, tt := range tests {
		got, err := ParseMountOptions(tt.in)
		if tt.wantBad == "" {
			if err != nil || !slices.Equal(got, tt.want) {
				t.Errorf("ParseMountOptions(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
			continue
		}
		if err == nil {
			t.Errorf("ParseMountOptions(%q) = %q, want an error", tt.in, got)
			continue
		}
		if !errors.Is(err, ErrInvalidMountOption) {
			t.Errorf("ParseMountOptions(%q): %v does not wrap ErrInvalidMountOption", tt.in, err)
		}
		if got != nil {
			t.Errorf("ParseMountOptions(%q) returned %q with its error", tt.in, got)
		}
		if !strings.Contains(err.Error(), tt.wantBad) {
			t.Errorf("ParseMountOptions(%q): %q does not name %s", tt.in, err, tt.wantBad)
		}
	}
}

func TestParseMountOptionsErrorListsAccepted(t *testing.T) {
	_, err := ParseMountOptions("suid")
	for _, opt := range allowedOptions {
		if !strings.Contains(err.Error(), opt) {
			t.Errorf("error %q does not list %q", err, opt)
		}
	}
}

func FuzzParseMountOptions(f *testing.F) {
	for _, s := range []string{"", "noatime", "noatime,discard", "suid", "noatime,,relatime", " sync ,dirsync", "ro,remount", "\x00,noatime", "lazytime,lazytime"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		opts, err := ParseMountOptions(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidMountOption) {
				t.Fatalf("ParseMountOptions(%q): error %v does not wrap ErrInvalidMountOption", s, err)
			}
			if opts != nil {
				t.Fatalf("ParseMountOptions(%q) returned options with an error", s)
			}
			return
		}
		for _, o := range opts {
			if !slices.Contains(allowedOptions, o) {
				t.Fatalf("ParseMountOptions(%q) accepted %q", s, o)
			}
		}
		if _, _, err := mountArgs(opts); err != nil {
			t.Fatalf("ParseMountOptions(%q) accepted %q that Mount refuses: %v", s, opts, err)
		}
	})
}

// A huge mount option is quoted by a short prefix only.
func TestHugeMountOptionQuotedShort(t *testing.T) {
	_, err := ParseMountOptions(strings.Repeat("Z", 10<<20))
	if !errors.Is(err, ErrInvalidMountOption) || len(err.Error()) > 400 {
		t.Fatalf("ParseMountOptions(10 MiB) = %.300v (%d bytes)", err, len(err.Error()))
	}
}

// A refused mount option is of the invalid-request class as well.
func TestInvalidMountOptionIsInvalid(t *testing.T) {
	_, err := ParseMountOptions("exec")
	if !errors.Is(err, ErrInvalidMountOption) || !errors.Is(err, sentinel.ErrInvalid) {
		t.Fatalf("ParseMountOptions(exec) = %v; want ErrInvalidMountOption and sentinel.ErrInvalid", err)
	}
}
