package e2e

import (
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// writerScript appends records "<seq> <md5 of seq>" to /data/log, each
// fsynced (busybox sync FILE) before the next.
const writerScript = `trap "exit 0" TERM
i=0
while :; do i=$((i+1)); echo "$i $(echo $i | md5sum | cut -c1-32)" >> /data/log; sync /data/log; done`

// checkLog asserts that log holds records 1..n, each intact, n >= least:
// a prefix of what the writer wrote, none torn.
func checkLog(t *testing.T, log string, least int) int {
	t.Helper()
	if log != "" && !strings.HasSuffix(log, "\n") {
		t.Fatalf("the log ends in a torn record: %q", log[max(0, len(log)-80):])
	}
	lines := strings.Split(strings.TrimSuffix(log, "\n"), "\n")
	for i, line := range lines {
		sum := md5.Sum([]byte(strconv.Itoa(i+1) + "\n"))
		if want := fmt.Sprintf("%d %s", i+1, hex.EncodeToString(sum[:])); line != want {
			t.Fatalf("record %d is %q, want %q", i+1, line, want)
		}
	}
	if len(lines) < least {
		t.Fatalf("%d records; %d were fsynced before the snapshot", len(lines), least)
	}
	return len(lines)
}

func dfBytes(t *testing.T, container, dir string) int64 {
	t.Helper()
	out := mustDocker(t, "exec", container, "df", "-B1", dir)
	f := strings.Fields(strings.Split(strings.TrimSpace(out), "\n")[1])
	n, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		t.Fatalf("df in the container: %q", out)
	}
	return n
}

// TestSnapshotCloneGrowUnderDocker is what a user sees: a container
// appends fsynced checksummed records to an xfs volume while `blockvol
// volume snapshot create` takes a snapshot and `blockvol volume resize`
// grows it — df in the container shows the new size, no restart; a larger
// clone of the snapshot (docker volume create -o from=) mounts in one
// container beside its source (xfs refuses twins: the clone has its own
// UUID), shows its own size, holds a prefix of the records, none torn, and
// its filesystem is clean (xfs_repair -n).
func TestSnapshotCloneGrowUnderDocker(t *testing.T) {
	requireDocker(t)
	p := startPlugin(t, PluginConfig{})
	bin := pluginBinary(t)
	cfg := []string{"--config", p.ConfigPath}
	blockvol := func(args ...string) string {
		t.Helper()
		code, out, errText := runBlockvol(t, bin, append(args, cfg...)...)
		if code != 0 || errText != "" {
			t.Fatalf("blockvol %s: exit %d, stderr %q", strings.Join(args, " "), code, errText)
		}
		return out
	}
	name := uniqueName(t)
	src := createVolume(t, p, "bvsnap-"+name, "size=320M", "fstype=xfs")
	c := startContainer(t, src, writerScript)
	least := waitLines(t, c, 50)

	snap := "bvsnap-s-" + name
	blockvol("volume", "snapshot", "create", src, snap)
	t.Cleanup(func() { _, _, _ = runBlockvol(t, bin, append([]string{"volume", "snapshot", "rm", snap}, cfg...)...) })
	if ls := blockvol("volume", "snapshot", "ls", src); !strings.Contains(ls, snap) {
		t.Fatalf("snapshot ls:\n%s", ls)
	}

	before := dfBytes(t, c, "/data")
	blockvol("volume", "resize", src, "400M")
	after := dfBytes(t, c, "/data")
	if after < before+60<<20 {
		t.Fatalf("df in the container: %d bytes before the resize to 400M, %d after", before, after)
	}
	t.Logf("df in the running container: %d -> %d bytes", before, after)
	n := waitLines(t, c, lineCount(t, c)) // the writer goes on
	mustDocker(t, "stop", "-t", "10", c)

	clone := createVolume(t, p, "bvsnap-c-"+name, "from="+snap, "size=480M")
	out, err := runContainer(t, "--rm", "-v", src+":/src", "-v", clone+":/data", env.image, "sh", "-c", "df -B1 /data | tail -1; echo ---; cat /data/log")
	if err != nil {
		t.Fatalf("a container with the source and its clone: %v\n%s", err, out)
	}
	df, log, _ := strings.Cut(out, "---\n")
	f := strings.Fields(df)
	if len(f) < 2 {
		t.Fatalf("df of the clone: %q", df)
	}
	if size, err := strconv.ParseInt(f[1], 10, 64); err != nil || size <= 400<<20 {
		t.Fatalf("df of the 480M clone: %q: not grown", df)
	}
	got := checkLog(t, log, least)
	t.Logf("records: %d fsynced before the snapshot, %d in the clone, %d written", least, got, n)

	img, _ := inspectVolume(t, clone).Status["image"].(string)
	if img == "" {
		t.Fatalf("inspect of the clone shows no image: %+v", inspectVolume(t, clone).Status)
	}
	requireReleased(t, p)
	if out, err := exec.Command("xfs_repair", "-n", "-f", img).CombinedOutput(); err != nil {
		t.Fatalf("xfs_repair -n of the clone: %v\n%s", err, out)
	}
}
