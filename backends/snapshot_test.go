package backends

import (
	"reflect"
	"testing"
)

func TestSnapshotsOf(t *testing.T) {
	all := func() []Snapshot {
		return []Snapshot{{Name: "s3", Volume: "a"}, {Name: "s1", Volume: "b"}, {Name: "s2", Volume: "a"}, {Name: "damaged"}}
	}
	names := func(s []Snapshot) []string {
		var n []string
		for _, x := range s {
			n = append(n, x.Name)
		}
		return n
	}
	for _, tc := range []struct {
		volume string
		want   []string
	}{
		{"", []string{"damaged", "s1", "s2", "s3"}},
		{"a", []string{"s2", "s3"}},
		{"none", nil},
	} {
		got := SnapshotsOf(all(), tc.volume)
		if !reflect.DeepEqual(names(got), tc.want) || (tc.want == nil && got != nil) {
			t.Errorf("SnapshotsOf(%q) = %v, want %v", tc.volume, names(got), tc.want)
		}
	}
}
