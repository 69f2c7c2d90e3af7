package vm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// growCase is one filesystem of the online-grow scenario: a volume of
// size from grown to to (toBytes) while mounted on agent A.
type growCase struct {
	fstype   string
	from, to string
	toBytes  int64
}

var growCases = []growCase{
	{fstype: "ext4", from: "256M", to: "512M", toBytes: 512 << 20},
	{fstype: "xfs", from: "320M", to: "640M", toBytes: 640 << 20},
}

// multiHostGrow: a volume of the iscsitarget backend, mounted on agent A
// while a writer appends fsynced checksummed records to it, is grown with
// `blockvol volume resize`, for ext4 and xfs. A user sees the filesystem
// larger at once (statfs, the device's size) while the writer keeps
// writing, none of its writes failing; A's initiator read the new size on
// the same session (the same session in the guest, the same I_T nexus on
// tgtd, no connection error in the kernel log: no re-login); every
// acknowledged record is there intact, and the filesystem is clean.
func multiHostGrow(t *testing.T, ctx context.Context, m *multiHost) {
	for _, gc := range growCases {
		t.Run(gc.fstype, func(t *testing.T) {
			d := growOnline(t, ctx, m, "bvmh-grow-"+gc.fstype, gc)
			t.Logf("online grow of a mounted %s volume %s -> %s under a writer: %s", gc.fstype, gc.from, gc.to, d.Round(time.Millisecond))
		})
	}
}

// growOnline runs the scenario of multiHostGrow on volume vol and returns
// how long `blockvol volume resize` took.
func growOnline(t testing.TB, ctx context.Context, m *multiHost, vol string, gc growCase) time.Duration {
	a := m.a
	mp := mountOrFatal(t, ctx, a, vol, "size="+gc.from, "fstype="+gc.fstype)
	t.Cleanup(func() { cli(ctx, a, "unmount", vol); cli(ctx, a, "rm", vol) })
	iqn := iqnOf(vol)
	sess, disk := sessionOf(t, ctx, a, iqn)
	nexus := nexusOf(t, ctx, m.host, iqn, a.Initiator)
	errsBefore := kernelErrors(t, ctx, a, sess, disk)
	totalBefore, _ := statfs(t, ctx, a, mp)

	w := startWriter(t, ctx, a, mp+"/records", "G-"+gc.fstype, "20ms")
	w.waitAcks(t, ctx, 20)
	t0 := time.Now()
	mustCLI(t, ctx, a, "resize", vol, gc.to)
	took := time.Since(t0)
	// What a user sees at once, the writer still running.
	if got := guestRun(t, ctx, a, "blockdev", "--getsize64", "/dev/"+disk); strings.TrimSpace(got) != strconv.FormatInt(gc.toBytes, 10) {
		t.Errorf("/dev/%s is %s bytes after the resize; want %d", disk, strings.TrimSpace(got), gc.toBytes)
	}
	totalAfter, freeAfter := statfs(t, ctx, a, mp)
	if grown := totalAfter - totalBefore; grown < (gc.toBytes/2)*9/10 || freeAfter <= totalBefore/2 {
		t.Errorf("%s at %s: %d bytes (%d free) after the resize, %d before: not grown by the %s added", gc.fstype, mp, totalAfter, freeAfter, totalBefore, gc.to)
	}
	acked, _ := w.acks(t, ctx)
	w.waitAcks(t, ctx, len(acked)+20) // it goes on writing after the grow
	w.stop(t, ctx)
	acked, failed := w.acks(t, ctx)
	if failed > 0 {
		t.Errorf("%d of the writer's writes failed during the grow", failed)
	}
	if s, dk := sessionOf(t, ctx, a, iqn); s != sess || dk != disk {
		t.Errorf("after the grow A's session/disk for %s is %s/%s; was %s/%s (a re-login)", iqn, s, dk, sess, disk)
	}
	if n := nexusOf(t, ctx, m.host, iqn, a.Initiator); n != nexus {
		t.Errorf("tgtd's I_T nexus of A on %s is %s after the grow; was %s (a re-login)", iqn, n, nexus)
	}
	if e := kernelErrors(t, ctx, a, sess, disk); e != errsBefore {
		t.Errorf("A's kernel logged I/O or connection errors during the grow:\n%s", strings.TrimPrefix(e, errsBefore))
	}
	got := readRecords(t, ctx, a, mp+"/records", "G-"+gc.fstype)
	if miss := missing(acked, got.Valid); len(miss) > 0 || got.Bad > 0 {
		t.Errorf("%d of the %d acknowledged records are missing (%v), %d damaged", len(miss), len(acked), head(miss), got.Bad)
	}
	t.Logf("%s: the plugin's account:\n%s", a.Name, guestRun(t, ctx, a, "sh", "-c",
		`grep -E "expand|rescan|multipath map|grown|frozen|thaw" /run/vmtest/blockvol.log | tail -n 8; dmesg | grep -i "capacity change" | tail -n 1; true`))
	mustCLI(t, ctx, a, "unmount", vol)
	img := filepath.Join(m.host.Pool, vol+".img")
	check := exec.CommandContext(ctx, "e2fsck", "-fn", img)
	if gc.fstype == "xfs" {
		check = exec.CommandContext(ctx, "xfs_repair", "-n", "-f", img)
	}
	if out, err := check.CombinedOutput(); err != nil {
		t.Errorf("the grown %s is not clean: %s: %v\n%s", gc.fstype, strings.Join(check.Args, " "), err, out)
	}
	return took
}

// sessionOf returns the guest's iSCSI session to iqn (sessionN) and the
// disk (sdX) of its LUN 1.
func sessionOf(t testing.TB, ctx context.Context, a *Agent, iqn string) (string, string) {
	t.Helper()
	out := guestRun(t, ctx, a, "sh", "-c", `for s in /sys/class/iscsi_session/session*; do
	[ "$(cat "$s/targetname")" = "$1" ] && echo "${s##*/}" $(ls "$s"/device/target*/*:*:*:1/block)
done; true`, "sh", iqn)
	f := strings.Fields(out)
	if len(f) != 2 {
		t.Fatalf("%s: sessions to %s with LUN 1: %q; want one", a.Name, iqn, out)
	}
	return f[0], f[1]
}

// nexusOf returns tgtd's I_T nexus id of initiator on target iqn: a new
// login makes a new one.
func nexusOf(t testing.TB, ctx context.Context, h *TargetHost, iqn, initiator string) string {
	t.Helper()
	out, err := h.TgtadmOut(ctx, "--mode", "target", "--op", "show")
	if err != nil {
		t.Fatal(err)
	}
	var in bool
	var nexus []string
	var id string
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		switch {
		case strings.HasPrefix(l, "Target "):
			in = len(f) == 3 && f[2] == iqn
		case in && len(f) == 3 && f[0] == "I_T" && f[1] == "nexus:":
			id = f[2]
		case in && len(f) >= 2 && f[0] == "Initiator:" && f[1] == initiator:
			nexus = append(nexus, id)
		}
	}
	if len(nexus) != 1 {
		t.Fatalf("tgtd's I_T nexus of %s on %s: %v; want one", initiator, iqn, nexus)
	}
	return nexus[0]
}

// kernelErrors returns the guest kernel's log lines of I/O errors on disk
// and of errors of the connection of session sess (sessionN; they precede
// a re-login). Other sessions' lines (an earlier scenario's fenced
// session retrying) are not the grow's.
func kernelErrors(t testing.TB, ctx context.Context, a *Agent, sess, disk string) string {
	t.Helper()
	conn := "connection" + strings.TrimPrefix(sess, "session") + ":"
	out := guestRun(t, ctx, a, "sh", "-c", `dmesg | grep -E "I/O error|conn error|detected conn|session recovery" ; true`)
	var mine []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, conn) || strings.Contains(l, "dev "+disk) || strings.Contains(l, disk+":") || strings.Contains(l, "["+disk+"]") {
			mine = append(mine, l)
		}
	}
	return strings.Join(mine, "\n")
}

// statfs returns the size and the free space, in bytes, of the
// filesystem mounted at mp.
func statfs(t testing.TB, ctx context.Context, a *Agent, mp string) (total, free int64) {
	t.Helper()
	out := guestRun(t, ctx, a, "stat", "-f", "-c", "%b %a %S", mp)
	var blocks, avail, bsize int64
	if _, err := fmt.Sscan(out, &blocks, &avail, &bsize); err != nil {
		t.Fatalf("stat -f %s: %q: %v", mp, out, err)
	}
	return blocks * bsize, avail * bsize
}

// growByHand grows volume vol, mounted on agent A, to gc.to the way an
// operator would without blockvol, and returns how long it took: the
// filesystem frozen (fsfreeze -f), the backing file lengthened and LUN 1
// removed and added again with tgtadm on the target host, the filesystem
// thawed, the LUN rescanned (sysfs), the filesystem grown (resize2fs,
// xfs_growfs). The reference of the online-grow figure.
func growByHand(tb testing.TB, ctx context.Context, m *multiHost, vol string, gc growCase) time.Duration {
	a := m.a
	mp := mountOrFatal(tb, ctx, a, vol, "size="+gc.from, "fstype="+gc.fstype)
	tb.Cleanup(func() { cli(ctx, a, "unmount", vol); cli(ctx, a, "rm", vol) })
	_, disk := sessionOf(tb, ctx, a, iqnOf(vol))
	img := filepath.Join(m.host.Pool, vol+".img")
	tid := tidOf(tb, ctx, m.host, iqnOf(vol))
	t0 := time.Now()
	guestRun(tb, ctx, a, "fsfreeze", "-f", mp)
	if err := os.Truncate(img, gc.toBytes); err != nil {
		tb.Fatal(err)
	}
	tick := time.NewTicker(20 * time.Millisecond) // while commands are in flight
	defer tick.Stop()
	for {
		err := m.host.Tgtadm(ctx, "--mode", "logicalunit", "--op", "delete", "--tid", tid, "--lun", "1")
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "still active") {
			tb.Fatal(err)
		}
		select {
		case <-ctx.Done():
			tb.Fatal(err)
		case <-tick.C:
		}
	}
	if err := m.host.Tgtadm(ctx, "--mode", "logicalunit", "--op", "new", "--tid", tid, "--lun", "1", "--backing-store", img); err != nil {
		tb.Fatal(err)
	}
	guestRun(tb, ctx, a, "fsfreeze", "-u", mp)
	guestRun(tb, ctx, a, "sh", "-c", `echo 1 >/sys/block/"$1"/device/rescan`, "sh", disk)
	if gc.fstype == "xfs" {
		guestRun(tb, ctx, a, "xfs_growfs", mp)
	} else {
		guestRun(tb, ctx, a, "resize2fs", "/dev/"+disk)
	}
	return time.Since(t0)
}

// tidOf returns tgtd's target id of iqn.
func tidOf(tb testing.TB, ctx context.Context, h *TargetHost, iqn string) string {
	tb.Helper()
	out, err := h.TgtadmOut(ctx, "--mode", "target", "--op", "show")
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "Target" && f[2] == iqn {
			return strings.TrimSuffix(f[1], ":")
		}
	}
	tb.Fatalf("no target %s on tgtd", iqn)
	return ""
}

// benchMultiHostGrow reports, for ext4 and xfs, the online grow of a
// mounted volume under a writer through blockvol beside the same grow by
// hand (growByHand) in the same guests, with the ratio.
func benchMultiHostGrow(b *testing.B, ctx context.Context, m *multiHost) {
	for _, gc := range growCases {
		d := growOnline(b, ctx, m, "bvmh-bgrow-"+gc.fstype, gc)
		ref := growByHand(b, ctx, m, "bvmh-hgrow-"+gc.fstype, gc)
		b.ReportMetric(d.Seconds(), "grow-"+gc.fstype+"-s")
		b.ReportMetric(ref.Seconds(), "grow-"+gc.fstype+"-byhand-s")
		b.Logf("online grow %-4s %s->%s: blockvol volume resize %6.2f s, by hand (fsfreeze, truncate, tgtadm delete+new, thaw, rescan, %s) %6.2f s: %.1f x",
			gc.fstype, gc.from, gc.to, d.Seconds(), map[string]string{"ext4": "resize2fs", "xfs": "xfs_growfs"}[gc.fstype], ref.Seconds(), d.Seconds()/ref.Seconds())
	}
}
