package vm

import (
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// The fencing scenarios of TestMultiHost (helper "fence", issue 9): what a
// fenced agent reports, and a target host whose tgtd restarts under a
// writer.

// checkLostOnA asserts what A's user sees of vol after B took it over
// while A had it mounted: inspect says lost and names B, a mount is
// refused in one line naming B, blockvol logged the loss once, and the
// unmount succeeds and releases A's side (mount, session).
func checkLostOnA(t testing.TB, ctx context.Context, m *multiHost, vol string) {
	t.Helper()
	out, rc, err := cli(ctx, m.a, "inspect", vol)
	if err != nil || rc != 0 {
		t.Fatalf("A's inspect of %s after the takeover: rc %d %v: %s", vol, rc, err, out)
	}
	t.Logf("A's inspect after the takeover:\n%s", out)
	if !regexp.MustCompile(`(?m)^state:\s+lost$`).MatchString(out) || !regexp.MustCompile(`(?m)^held_by:\s+.*`+m.b.Name).MatchString(out) ||
		!regexp.MustCompile(`(?m)^Mountpoint:\s+-$`).MatchString(out) {
		t.Errorf("A's inspect of %s should say state lost, held_by %s and no mountpoint", vol, m.b.Name)
	}
	out, rc, err = cli(ctx, m.a, "mount", vol)
	switch {
	case err != nil:
		t.Fatal(err)
	case rc == 0:
		t.Errorf("A mounted %s again after B took it over: %s", vol, out)
	case strings.Contains(out, "\n") || !strings.Contains(out, m.b.Name):
		t.Errorf("A's refused mount should say so in one line naming %s; got %q", m.b.Name, out)
	default:
		t.Logf("A's mount was refused: %s", out)
	}
	logged := guestRun(t, ctx, m.a, "sh", "-c", `grep -c "level=WARN.*taken over by another host.*volume=$1" /run/vmtest/blockvol.log; true`, "sh", vol)
	if strings.TrimSpace(logged) != "1" {
		t.Errorf("A's blockvol logged the loss of %s %s times; want one WARN line", vol, strings.TrimSpace(logged))
	}
	t0 := time.Now()
	if out, rc, err := cli(ctx, m.a, "unmount", vol); err != nil || rc != 0 {
		t.Errorf("A's unmount of the lost %s failed: rc %d %v: %s", vol, rc, err, out)
	}
	tUnmount := time.Since(t0)
	// A process still blocked on the stale mount (the killed writer, until
	// its I/O fails at the session's replacement_timeout: the target
	// refuses A) keeps it busy: blockvol's watch finishes the release
	// once it has gone.
	var left string
	err = poll(ctx, 2*time.Minute, "A's side of "+vol+" released", func() bool {
		left = guestRun(t, ctx, m.a, "sh", "-c", `cat /sys/class/iscsi_session/session*/targetname 2>/dev/null; grep " /var/lib/blockvol" /proc/mounts; true`)
		return !strings.Contains(left, iqnOf(vol)) && !strings.Contains(left, vol)
	})
	if err != nil {
		t.Errorf("%v: A still has it (session or mount):\n%s\nblockvol's log:\n%s", err, left,
			guestRun(t, ctx, m.a, "sh", "-c", `grep "volume=$1" /run/vmtest/blockvol.log | tail -20`, "sh", vol))
	}
	t.Logf("A's unmount of the lost volume answered in %s; A's side released %s after it", tUnmount.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
	in, err := m.host.Connected(ctx, iqnOf(vol))
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(in, m.a.Initiator) {
		t.Errorf("A logged in to %s again: %v", iqnOf(vol), in)
	}
}

// multiHostTgtdRestart: tgtd on the target host is killed and started
// again (it comes back without targets) while A writes; blockvol on A
// exports the target again within seconds, A's I/O resumes, every record
// A acknowledged is intact, and A's kernel saw no I/O or filesystem error.
//
// The session's recovery timeout is widened to tgtdRestartRecovery for
// the scenario: blockvol's default replacement_timeout (15 s) holds the
// stall with room to spare at the loads docs/failover.md gives, but a CI
// host running three emulated kernels on two cores once stretched it past
// 15 s, and the scenario is about re-export and resumption, not about the
// test host's load. Whether the stall stayed inside 15 s is logged.
// tgtdRestartRecovery is the recovery timeout of A's session during
// multiHostTgtdRestart.
const tgtdRestartRecovery = 90 * time.Second

func multiHostTgtdRestart(t testing.TB, ctx context.Context, m *multiHost) {
	const vol = "bvmh-tgtd"
	img := filepath.Join(m.host.Pool, vol+".img")
	t0 := time.Now()
	mp := mountOrFatal(t, ctx, m.a, vol, "size=512M", "fstype=ext4")
	single := time.Since(t0)
	t.Cleanup(func() { cli(ctx, m.a, "unmount", vol); cli(ctx, m.a, "rm", vol) })
	w := startWriter(t, ctx, m.a, mp+"/records", "T", "20ms")
	w.waitAcks(t, ctx, 30)
	setRecoveryTmo(ctx, m.a, vol, int(tgtdRestartRecovery/time.Second))
	guestRun(t, ctx, m.a, "sh", "-c", "echo bvmh-fence: tgtd restart >/dev/kmsg")

	tKill := time.Now()
	m.host.StopTGTD()
	if err := m.host.StartTGTD(ctx); err != nil {
		t.Fatalf("start tgtd again: %v", err)
	}
	tUp := time.Now()
	atUp, _ := w.acks(t, ctx)
	if err := poll(ctx, 2*time.Minute, "target "+iqnOf(vol)+" exported again for A", func() bool {
		out, err := m.host.showTarget(ctx, iqnOf(vol))
		return err == nil && out.file != "" && slices.Contains(out.acl, m.a.Initiator)
	}); err != nil {
		t.Fatal(err)
	}
	reexport := time.Since(tUp)
	if err := poll(ctx, 3*time.Minute, "A's writer acknowledging again", func() bool {
		acked, _ := w.acks(t, ctx)
		return len(acked) >= len(atUp)+10
	}); err != nil {
		_, failed := w.acks(t, ctx)
		t.Fatalf("%v (target exported again %s after tgtd was back; %d writes failed)\n%s", err, reexport.Round(time.Millisecond), failed,
			guestRun(t, ctx, m.a, "sh", "-c", `dmesg | tail -40; iscsiadm -m session -P 1 | grep -i -E "target|state"; grep "op=watch\|op=reconcile" /run/vmtest/blockvol.log | tail -10`))
	}
	resumed := time.Since(tKill)
	if resumed > 15*time.Second {
		t.Logf("the stall (%s) went past blockvol's default replacement_timeout (15 s): with it, A's writes would have failed under this load", resumed.Round(time.Millisecond))
	}
	w.stop(t, ctx)
	acked, failed := w.acks(t, ctx)
	if failed > 0 {
		t.Errorf("%d of A's writes failed across the tgtd restart", failed)
	}
	guestRun(t, ctx, m.a, "sh", "-c", "sync; echo 3 >/proc/sys/vm/drop_caches")
	got := readRecords(t, ctx, m.a, mp+"/records", "T")
	if miss := missing(acked, got.Valid); len(miss) > 0 || got.Bad > 0 {
		t.Errorf("A reads back %d records, lacks %d of the %d it acknowledged (%v), %d damaged", len(got.Valid), len(miss), len(acked), head(miss), got.Bad)
	}
	dmesg := guestRun(t, ctx, m.a, "dmesg")
	if i := strings.LastIndex(dmesg, "bvmh-fence: tgtd restart"); i >= 0 {
		dmesg = dmesg[i:]
	}
	if bad := regexp.MustCompile(`(?m)^.*(EXT4-fs error|EXT4-fs warning|I/O error|Aborting journal|read-only).*$`).FindAllString(dmesg, 5); len(bad) > 0 {
		t.Errorf("A's kernel reported errors after the tgtd restart:\n%s", strings.Join(bad, "\n"))
	}
	mustCLI(t, ctx, m.a, "unmount", vol)
	if out, err := exec.CommandContext(ctx, "e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Errorf("the filesystem is not clean after the tgtd restart: e2fsck -fn: %v\n%s", err, out)
	}
	t.Logf("A's kernel and blockvol during the restart:\n%s\n%s", grepLines(dmesg, "connection|session|iscsi|recover"),
		guestRun(t, ctx, m.a, "sh", "-c", `grep "op=watch\|op=reconcile" /run/vmtest/blockvol.log | tail -10`))
	t.Logf("tgtd killed at %s, back at %s", tKill.UTC().Format("15:04:05.000"), tUp.UTC().Format("15:04:05.000"))
	t.Logf("tgtd restart under A's writer: target exported again %s after tgtd was back (tgtd down %s); writer acknowledging again %s after the kill; %d records acknowledged, %d failed; single create+mount of this volume %s",
		reexport.Round(time.Millisecond), tUp.Sub(tKill).Round(time.Millisecond), resumed.Round(time.Millisecond), len(acked), failed, single.Round(time.Millisecond))
	reportFigure("tgtd-restart-reexport", reexport)
	reportFigure("tgtd-restart-resume", resumed)
}

// shownTarget is one target of `tgtadm --op show`: its LUN 1 file and ACL.
type shownTarget struct {
	file string
	acl  []string
}

// showTarget returns target iqn as tgtd shows it now (zero when
// absent).
func (h *TargetHost) showTarget(ctx context.Context, iqn string) (shownTarget, error) {
	out, err := h.TgtadmOut(ctx, "--mode", "target", "--op", "show")
	if err != nil {
		return shownTarget{}, err
	}
	var st shownTarget
	cur, section := "", ""
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "Target ") {
			_, name, _ := strings.Cut(l, ": ")
			cur, section = strings.TrimSpace(name), ""
			continue
		}
		if cur != iqn {
			continue
		}
		s := strings.TrimSpace(l)
		switch {
		case strings.HasSuffix(s, "information:"):
			section = s
		case section == "LUN information:" && strings.HasPrefix(s, "Backing store path: /"):
			st.file = strings.TrimPrefix(s, "Backing store path: ")
		case section == "ACL information:" && s != "":
			st.acl = append(st.acl, s)
		}
	}
	return st, nil
}

// grepLines returns the lines of s matching the regular expression re.
func grepLines(s, re string) string {
	var out []string
	r := regexp.MustCompile(re)
	for _, l := range strings.Split(s, "\n") {
		if r.MatchString(l) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
