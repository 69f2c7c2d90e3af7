package volumes

import (
	"errors"
	"github.com/blockvol/blockvol/fs"
	"slices"
	"strings"
	"testing"

	"github.com/blockvol/blockvol/internal/sentinel"
)

// fakeMountOpts accepts noatime and discard only.
func fakeMountOpts(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	var out []string
	for _, o := range strings.Split(s, ",") {
		if o != "noatime" && o != "discard" {
			return nil, errors.New("bad mount option " + o)
		}
		out = append(out, o)
	}
	return out, nil
}

var testDefaults = OptionDefaults{Size: "1G", FSType: "ext4", Backend: "local", Backends: []string{"local", "shared"}}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"1", 1 << 30},
		{"10", 10 << 30},
		{" 3 ", 3 << 30},
		{"512M", 512 << 20},
		{"512m", 512 << 20},
		{"512MiB", 512 << 20},
		{"10G", 10 << 30},
		{"10Gi", 10 << 30},
		{"10GB", 10 << 30},
		{"2T", 2 << 40},
		{"1024T", 1 << 50},
	} {
		got, err := ParseSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "0", "-1", "0G", "1e99", "1.5", "1.5G", "ten", "10X", "G", "99999999999999999999", "1025T", "9223372036854775807G", "+5", "0x10"} {
		if got, err := ParseSize(in); !errors.Is(err, sentinel.ErrInvalid) || !strings.Contains(err.Error(), "option size") {
			t.Errorf("ParseSize(%q) = %d, %v; want an sentinel.ErrInvalid naming the size option", in, got, err)
		}
	}
}

func TestParseOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		raw  map[string]string
		want Options
	}{
		{"defaults from nil (Docker without -o)", nil, Options{SizeBytes: 1 << 30, FSType: "ext4", Backend: "local"}},
		{"defaults from {} (dvdcli)", map[string]string{}, Options{SizeBytes: 1 << 30, FSType: "ext4", Backend: "local"}},
		{"mesos-module-dvdi keys", map[string]string{"size": "5", "newfstype": "xfs", "overwritefs": "true", "volumetype": "ssd", "iops": "300"},
			Options{SizeBytes: 5 << 30, FSType: "xfs", OverwriteFS: true, VolumeType: "ssd", IOPS: 300, Backend: "local"}},
		{"keys are case-insensitive", map[string]string{"Size": "2G", "FSTYPE": "XFS", "Type": "gold", "AvailabilityZone": "nova", "Backend": "shared"},
			Options{SizeBytes: 2 << 30, FSType: "xfs", VolumeType: "gold", AvailabilityZone: "nova", Backend: "shared"}},
		{"mountopts", map[string]string{"mountopts": "noatime,discard"}, Options{SizeBytes: 1 << 30, FSType: "ext4", MountOpts: []string{"noatime", "discard"}, Backend: "local"}},
		{"overwritefs=false", map[string]string{"overwritefs": "false"}, Options{SizeBytes: 1 << 30, FSType: "ext4", Backend: "local"}},
		{"preempt", map[string]string{"Preempt": "true"}, Options{SizeBytes: 1 << 30, FSType: "ext4", Preempt: true, Backend: "local"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseOptions(tc.raw, testDefaults, fakeMountOpts)
			if err != nil {
				t.Fatal(err)
			}
			if !equalOptions(got, tc.want) {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		raw  map[string]string
		want string
	}{
		{map[string]string{"sise": "1"}, `unknown option "sise"; accepted options are availabilityzone, backend, from, fstype, iops,`},
		{map[string]string{"fstype": "btrfs"}, `option fstype "btrfs" is not supported; use ext4 or xfs`},
		{map[string]string{"fstype": ""}, `option fstype "" is not supported`},
		{map[string]string{"size": "200M", "fstype": "xfs"}, "option size 200 MiB is too small for xfs, which needs at least 300 MiB"},
		// mkfs.xfs refuses under 300 MiB, not 300 MB.
		{map[string]string{"size": "299M", "fstype": "xfs"}, "option size 299 MiB is too small for xfs, which needs at least 300 MiB"},
		{map[string]string{"overwritefs": "maybe"}, `option overwritefs "maybe" must be true or false`},
		{map[string]string{"preempt": "yes please"}, `option preempt "yes please" must be true or false`},
		{map[string]string{"iops": "0"}, `option iops "0" must be a positive whole number`},
		{map[string]string{"iops": "fast"}, `option iops "fast" must be a positive whole number`},
		{map[string]string{"backend": "nope"}, `option backend "nope" is not configured on this host; configured backends: local, shared`},
		{map[string]string{"mountopts": "exec"}, "option mountopts: bad mount option exec"},
		{map[string]string{"type": "a", "volumetype": "b"}, "both set volumetype; give it once"},
	} {
		_, err := ParseOptions(tc.raw, testDefaults, fakeMountOpts)
		if !errors.Is(err, sentinel.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseOptions(%v) = %v; want sentinel.ErrInvalid containing %q", tc.raw, err, tc.want)
		}
	}
}

func equalOptions(a, b Options) bool {
	return a.SizeBytes == b.SizeBytes && a.FSType == b.FSType && a.OverwriteFS == b.OverwriteFS && a.Preempt == b.Preempt &&
		a.VolumeType == b.VolumeType && a.IOPS == b.IOPS && a.AvailabilityZone == b.AvailabilityZone &&
		strings.Join(a.MountOpts, ",") == strings.Join(b.MountOpts, ",") && a.Backend == b.Backend
}

func TestOptionsSurviveMeta(t *testing.T) {
	o := Options{SizeBytes: 5 << 30, FSType: "xfs", OverwriteFS: true, MountOpts: []string{"noatime"}, Backend: "local"}
	meta := encodeMeta(o)
	if meta[metaOverwritePendingKey] != "true" {
		t.Fatalf("overwritefs not marked pending: %v", meta)
	}
	got, err := decodeMeta(meta, Options{})
	if err != nil || !equalOptions(got, o) {
		t.Fatalf("decodeMeta = %+v, %v", got, err)
	}
	def := Options{FSType: "ext4"}
	if got, err := decodeMeta(map[string]string{"other": "x"}, def); err != nil || got.FSType != "ext4" {
		t.Fatalf("a volume without stored options must get the defaults: %+v, %v", got, err)
	}
	if _, err := decodeMeta(map[string]string{metaOptionsKey: "{"}, def); err == nil {
		t.Fatal("corrupt stored options accepted")
	}
}

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"a", "data1", "my_vol.v2-b", "A", "0abc", strings.Repeat("x", 128)} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("ValidateName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "../x", "a/b", "/abs", "x\x00", "-lead", "_lead", ".hidden", "sp ace", "ünï", "a\nb", strings.Repeat("x", 129)} {
		if err := ValidateName(bad); !errors.Is(err, sentinel.ErrInvalid) {
			t.Errorf("ValidateName(%q) = %v, want sentinel.ErrInvalid", bad, err)
		}
	}
}

// FuzzParseOptions: any input either fails with an sentinel.ErrInvalid sentence or
// yields options within bounds; never a panic.
func FuzzParseOptions(f *testing.F) {
	f.Add("size", "10", "fstype", "xfs")
	f.Add("SIZE", "512M", "overwritefs", "true")
	f.Add("size", "1e99", "iops", "-3")
	f.Add("newfstype", "ext4", "mountopts", "noatime,discard")
	f.Add("size", "18446744073709551616T", "backend", "shared")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		o, err := ParseOptions(map[string]string{k1: v1, k2: v2}, testDefaults, fakeMountOpts)
		if err != nil {
			if !errors.Is(err, sentinel.ErrInvalid) || err.Error() == "" {
				t.Fatalf("error %v is not an sentinel.ErrInvalid sentence", err)
			}
			return
		}
		if o.SizeBytes <= 0 || o.SizeBytes > maxSizeBytes {
			t.Fatalf("size %d out of bounds", o.SizeBytes)
		}
		if fs.MinSizeBytes(o.FSType) == 0 {
			t.Fatalf("fstype %q accepted", o.FSType)
		}
		if o.SizeBytes < fs.MinSizeBytes(o.FSType) {
			t.Fatalf("size %d below the minimum of %s", o.SizeBytes, o.FSType)
		}
		if !slices.Contains(testDefaults.Backends, o.Backend) {
			t.Fatalf("backend %q accepted", o.Backend)
		}
	})
}
