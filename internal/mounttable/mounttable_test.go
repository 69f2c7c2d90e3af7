package mounttable

import (
	"os"
	"path/filepath"
	"testing"
)

func TestRead(t *testing.T) {
	p := filepath.Join(t.TempDir(), "mountinfo")
	write := func(s string) {
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n" +
		"37 35 8:17 / /data rw - xfs /dev/sdb1 rw\n")
	m, err := Read(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 2 || m[0].Mountpoint != "/mnt/with space" || m[0].Major != 98 || m[1].Source != "/dev/sdb1" || m[1].FSType != "xfs" {
		t.Errorf("Read = %+v", m)
	}
	// A line it cannot read makes the whole table unreadable: a caller
	// then refuses rather than guessing that nothing is in use.
	write("garbage line\n")
	if _, err := Read(p); err == nil {
		t.Error("a malformed line was skipped silently")
	}
	if _, err := Read(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing table: no error")
	}
}
