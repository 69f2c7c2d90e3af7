package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The initiator-side scenarios of the multi-host tests: a portal that does
// not answer, and (multihost_test.go) a detach with the target host cut off.

// deadPortalIP is an address of the test's own network (10.213.0.0/24)
// that nothing holds: a guest's ARP for it goes unanswered, as for a
// portal whose host is down.
const deadPortalIP = "10.213.0.99"

// probeTID is the tgt target id of the test's own probe target, far above
// the ids the backend gives its volumes.
const probeTID = 9001

// probeTarget exports a target of the test's own (not a blockvol volume):
// tid probeTID, a 64 MiB sparse backing file outside the backend's pool,
// LUN 1, open to every initiator. It is deleted when t ends.
func probeTarget(t testing.TB, ctx context.Context, m *multiHost, name string) string {
	t.Helper()
	iqn := iqnOf(name)
	img := filepath.Join(m.host.Dir, name+".img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	tid := strconv.Itoa(probeTID)
	t.Cleanup(func() {
		m.host.Tgtadm(context.Background(), "--mode", "target", "--op", "delete", "--force", "--tid", tid)
		os.Remove(img)
	})
	for _, args := range [][]string{
		{"--mode", "target", "--op", "new", "--tid", tid, "--targetname", iqn},
		{"--mode", "logicalunit", "--op", "new", "--tid", tid, "--lun", "1", "--backing-store", img},
		{"--mode", "target", "--op", "bind", "--tid", tid, "--initiator-address", "ALL"},
	} {
		if err := m.host.Tgtadm(ctx, args...); err != nil {
			t.Fatal(err)
		}
	}
	return iqn
}

// loginResult is what `vmguest login` prints.
type loginResult struct {
	Attach, Detach float64
	Device, Error  string
	DetachError    string `json:"detach_error"`
}

// guestLogin attaches LUN 1 of iqn on a through portals with blockvol's
// initiator at its defaults, and detaches it (guest/paths.go).
func guestLogin(t testing.TB, ctx context.Context, a *Agent, iqn string, portals ...string) loginResult {
	t.Helper()
	const log = "/run/vmtest/login.log"
	argv := append([]string{"sh", "-c", `log=$1; shift; exec /usr/bin/vmguest login "$@" 2>>"$log"`, "sh", log, iqn, "1"}, portals...)
	out, rc, err := a.Run(ctx, 4*time.Minute, argv...)
	if err != nil {
		t.Fatal(err)
	}
	var r loginResult
	if jerr := json.Unmarshal([]byte(strings.TrimSpace(out)), &r); jerr != nil || rc != 0 {
		logTail, _, _ := a.Run(ctx, time.Minute, "tail", "-n", "30", log)
		t.Fatalf("%s: vmguest login %v: rc %d: %s\ninitiator log:\n%s", a.Name, portals, rc, out, logTail)
	}
	return r
}

// sessionsOf returns the iSCSI sessions a has to iqn, as "address:port".
func sessionsOf(t testing.TB, ctx context.Context, a *Agent, iqn string) []string {
	t.Helper()
	out := guestRun(t, ctx, a, "sh", "-c", `for s in /sys/class/iscsi_session/session*; do
		[ -e "$s" ] || continue
		[ "$(cat $s/targetname)" = "$1" ] || continue
		c=/sys/class/iscsi_connection/connection${s##*session}:0
		echo "$(cat $c/persistent_address):$(cat $c/persistent_port)"
	done`, "sh", iqn)
	return strings.Fields(out)
}

// multiHostDeadPortal: a target reached through a live portal and one that
// does not answer is attached through the live one; the dead portal costs
// blockvol's portal login bound (seconds), not iscsid.conf's 8 attempts of
// 15 s, and no session or half-done login is left behind. The figure: the
// attach with the dead portal beside the attach through the live portal
// alone, alternated, in the same run.
func multiHostDeadPortal(t testing.TB, ctx context.Context, m *multiHost) {
	iqn := probeTarget(t, ctx, m, "bvmh-probe")
	live, dead := TargetIP+":3260", deadPortalIP+":3260"
	var liveSecs, deadSecs []float64
	for range 2 {
		r := guestLogin(t, ctx, m.a, iqn, live)
		liveSecs = append(liveSecs, r.Attach)
		r = guestLogin(t, ctx, m.a, iqn, dead, live)
		deadSecs = append(deadSecs, r.Attach)
		if !strings.Contains(r.Device, "/dev/") {
			t.Errorf("attach beside a dead portal handed out %q", r.Device)
		}
	}
	t.Logf("the initiator's calls for the dead portal (last attach):\n%s", guestRun(t, ctx, m.a, "sh", "-c",
		`grep -E 'running iscsiadm.*`+deadPortalIP+`|portal failed' /run/vmtest/login.log | tail -n 6 | cut -c1-220; true`))
	if left := sessionsOf(t, ctx, m.a, iqn); len(left) > 0 {
		t.Errorf("%s still has sessions to %s after the detach: %v", m.a.Name, iqn, left)
	}
	// No login of the dead portal goes on in iscsid after the attach.
	if out := guestRun(t, ctx, m.a, "sh", "-c", `iscsiadm -m node 2>/dev/null; true`); strings.Contains(out, deadPortalIP) {
		t.Errorf("the dead portal's node record is left behind:\n%s", out)
	}
	mean := func(s []float64) float64 { return (s[0] + s[1]) / 2 }
	l, d := mean(liveSecs), mean(deadSecs)
	t.Logf("attach (blockvol's initiator, defaults): live portal alone %.2f s, %.2f s; beside a dead portal %.2f s, %.2f s; cost of the dead portal %.2f s",
		liveSecs[0], liveSecs[1], deadSecs[0], deadSecs[1], d-l)
	reportFigure("login-live", secs(l))
	reportFigure("login-dead-portal", secs(d))
}

func secs(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// reportPathsFigures logs the figures of the scenarios above in a
// benchmark, each beside its reference from the same run.
func reportPathsFigures(b *testing.B) {
	figures.mu.Lock()
	defer figures.mu.Unlock()
	live, dead := figures.m["login-live"], figures.m["login-dead-portal"]
	if live > 0 && dead > 0 {
		b.ReportMetric(live.Seconds(), "login-live-s")
		b.ReportMetric(dead.Seconds(), "login-dead-portal-s")
		b.Logf("%-22s %7.2f s  (live portal alone %.2f s: a dead portal costs %.2f s, %.1f x)",
			"login beside dead", dead.Seconds(), live.Seconds(), (dead - live).Seconds(), dead.Seconds()/live.Seconds())
	}
	if d := figures.m["multipath-stall"]; d > 0 {
		b.ReportMetric(d.Seconds(), "multipath-stall-s")
		b.Logf("%-22s %7.2f s  (longest time a writer, fsync every 20 ms, made no progress when one of two paths died)", "multipath stall", d.Seconds())
	}
	if d := figures.m["detach-unreachable"]; d > 0 {
		b.ReportMetric(d.Seconds(), "detach-unreachable-s")
		b.Logf("%-22s %7.2f s  (unmount on A with the target host cut off)", "detach unreachable", d.Seconds())
	}
}

// multipathConf makes multipathd build a map only for a WWID seen on two
// paths or more (a single-path LUN of the other scenarios stays a plain
// disk), put both paths in one group so that I/O goes over both (the cut
// path carries I/O when it dies), and check paths every 2 s.
const multipathConf = `defaults {
	user_friendly_names yes
	find_multipaths yes
	polling_interval 2
}
overrides {
	path_grouping_policy multibus
}
blacklist {
	devnode "^(loop|ram|zram|vd)"
}
`

// startMultipathd runs multipathd on a for the rest of t: libdevmapper
// makes the /dev/mapper nodes itself (the guest's udev has no dm rules).
// When t ends, multipathd is stopped and its maps, bindings and WWIDs are
// dropped, so that later scenarios see plain disks again.
func startMultipathd(t testing.TB, ctx context.Context, a *Agent) {
	t.Helper()
	guestRun(t, ctx, a, "sh", "-c", `mkdir -p /etc/multipath && printf '%s' "$1" >/etc/multipath.conf &&
		DM_DISABLE_UDEV=1 setsid multipathd -d -s >/run/vmtest/multipathd.log 2>&1 </dev/null &`, "sh", multipathConf)
	t.Cleanup(func() {
		a.Run(context.Background(), time.Minute, "sh", "-c", `multipathd shutdown; while multipathd show daemon >/dev/null 2>&1; do sleep 0.1; done
			DM_DISABLE_UDEV=1 multipath -F; rm -f /etc/multipath/wwids /etc/multipath/bindings /etc/multipath.conf; true`)
	})
	err := poll(ctx, time.Minute, "multipathd running on "+a.Name, func() bool {
		out, rc, _ := a.Run(ctx, 10*time.Second, "multipathd", "show", "daemon")
		// "pid N idle" (or "running" while it works): what blockvol asks.
		f := strings.Fields(out)
		return rc == 0 && len(f) >= 3 && f[0] == "pid" && f[2] != "shutdown"
	})
	if err != nil {
		log, _, _ := a.Run(ctx, time.Minute, "tail", "-n", "20", "/run/vmtest/multipathd.log")
		t.Fatalf("%v\n%s", err, log)
	}
}

// ackWatch follows a writer's acknowledged count and keeps the longest
// time it made no progress.
type ackWatch struct {
	last     int
	lastAt   time.Time
	stall    time.Duration
	polls    int
	maxSince time.Time
}

func (w *ackWatch) see(n int, now time.Time) {
	if n > w.last {
		if gap := now.Sub(w.lastAt); gap > w.stall {
			w.stall, w.maxSince = gap, w.lastAt
		}
		w.last, w.lastAt = n, now
	}
	w.polls++
}

// multiHostMultipath: a volume of the "mpath" backend (the target host
// reached through both of its addresses) is mounted on A on the
// dm-multipath device over two paths; while A's writer writes, one path is
// cut (the target host drops its second address); A's I/O continues on the
// other path without an error, and every record A acknowledged is intact
// on B. The figure: the longest time the writer made no progress.
func multiHostMultipath(t testing.TB, ctx context.Context, m *multiHost) {
	const vol = "bvmh-mpath"
	startMultipathd(t, ctx, m.a)
	mp := mountOrFatal(t, ctx, m.a, vol, "size=256M", "backend=mpath")
	addr := func(op string) error {
		out, err := exec.CommandContext(ctx, "ip", "-n", m.host.NS, "addr", op, TargetIP2+"/24", "dev", bridge).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip addr %s %s: %w: %s", op, TargetIP2, err, out)
		}
		return nil
	}
	cut := false
	t.Cleanup(func() {
		if cut {
			addr("add")
		}
		cli(ctx, m.b, "unmount", vol)
		cli(ctx, m.a, "unmount", vol)
		cli(ctx, m.a, "rm", vol)
	})
	src := strings.TrimSpace(guestRun(t, ctx, m.a, "sh", "-c", `awk -v mp="$1" '$2 == mp {print $1}' /proc/mounts`, "sh", mp))
	maps := guestRun(t, ctx, m.a, "multipath", "-ll")
	tmo := guestRun(t, ctx, m.a, "sh", "-c", `for s in /sys/class/iscsi_session/session*; do echo "$(cat $s/targetname) recovery_tmo=$(cat $s/recovery_tmo)"; done; true`)
	t.Logf("A mounted %s from %s:\n%s\nsessions:\n%s", vol, src, maps, tmo)
	if !strings.Contains(src, "/dev/dm-") && !strings.Contains(src, "/dev/mapper/") {
		t.Fatalf("%s is mounted from %s, not from a dm-multipath device", vol, src)
	}
	if n := strings.Count(maps, "active ready running"); n != 2 || strings.Count(maps, "policy=") != 1 {
		t.Fatalf("the multipath map should have one group of 2 active paths (I/O over both):\n%s", maps)
	}

	w := startWriter(t, ctx, m.a, mp+"/records", "M", "20ms")
	w.waitAcks(t, ctx, 30)
	acked, _ := w.acks(t, ctx)
	if err := addr("del"); err != nil {
		t.Fatal(err)
	}
	cut = true
	t0 := time.Now()
	watch := ackWatch{last: len(acked), lastAt: t0}
	target := len(acked) + 100
	err := poll(ctx, 3*time.Minute, fmt.Sprintf("%d acknowledged records on %s after the path was cut", target, m.a.Name), func() bool {
		a, _ := w.acks(t, ctx)
		watch.see(len(a), time.Now())
		return len(a) >= target
	})
	w.stop(t, ctx)
	acked, failed := w.acks(t, ctx)
	after := guestRun(t, ctx, m.a, "multipath", "-ll")
	if err != nil {
		t.Fatalf("%v; paths now:\n%s", err, after)
	}
	if failed > 0 {
		t.Errorf("%d of A's writes failed after one of two paths was cut", failed)
	}
	t.Logf("paths after the cut:\n%s", after)
	mustCLI(t, ctx, m.a, "unmount", vol)
	if err := addr("add"); err != nil {
		t.Fatal(err)
	}
	cut = false
	mpB := mountOrFatal(t, ctx, m.b, vol)
	got := readRecords(t, ctx, m.b, mpB+"/records", "M")
	if miss := missing(acked, got.Valid); len(miss) > 0 || got.Bad > 0 {
		t.Errorf("B lacks %d of the %d records A acknowledged (%v), %d damaged", len(miss), len(acked), head(miss), got.Bad)
	}
	mustCLI(t, ctx, m.b, "unmount", vol)
	t.Logf("multipath: one of two paths cut while writing every 20 ms: longest stall %s (%d polls), %d records acknowledged, none failed: %v",
		watch.stall.Round(10*time.Millisecond), watch.polls, len(acked), failed == 0)
	reportFigure("multipath-stall", watch.stall)
}
