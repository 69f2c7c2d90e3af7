package iscsitarget

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/iscsi"
)

// rescanInitiator is a fakeInitiator that can rescan (backends.Rescanner).
type rescanInitiator struct {
	*fakeInitiator
	mu       sync.Mutex
	rescans  []iscsi.Target
	onRescan func()
}

func (r *rescanInitiator) Rescan(_ context.Context, t iscsi.Target) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rescans = append(r.rescans, t)
	if r.onRescan != nil {
		r.onRescan()
	}
	return nil
}

// heldEnv is a unit test's backend whose initiator can rescan, and a hold
// that records whether the writes are held.
type heldEnv struct {
	*env
	ini   *rescanInitiator
	held  bool
	holds int
}

func newHeldEnv(t *testing.T, calls ...hostexec.Call) *heldEnv {
	e := newEnv(t, nil, calls...)
	ri := &rescanInitiator{fakeInitiator: e.ini}
	e.b.init = ri
	return &heldEnv{env: e, ini: ri}
}

func (h *heldEnv) hold(step func() error) error {
	h.holds++
	h.held = true
	defer func() { h.held = false }()
	return step()
}

// whileHeld makes call c check that the writes are held when it runs.
func (h *heldEnv) whileHeld(c hostexec.Call) hostexec.Call {
	c.Do = func() {
		if !h.held {
			h.t.Errorf("%s ran while this host's writes were not held", strings.Join(c.Argv, " "))
		}
	}
	return c
}

// ExpandHeld of a volume only this host is logged in to: the file grows
// and the record says so outside the hold; inside it one helper run on
// the target host removes LUN 1 — waiting while tgt says commands are in
// flight — and adds it again over the same file; after it, this host
// rescans the LUN (same session).
func TestExpandHeldReaddsTheLUNWhileHeldThenRescans(t *testing.T) {
	r := claim(rec("v1"))
	grown := r
	grown.SizeBytes = 2 * gib
	tg := exported(3, r)
	tg.sessions = []session{{id: 7, initiator: me, conns: []int{0}}}
	h := newHeldEnv(t)
	h.host.Expect(
		lockCall("expand", "v1"),
		scanCall("v1", vol(poolDir, r)),
		showCall(tg),
		helperCall("grow", poolDir+"/v1.img", "2147483648"),
		writeCall(poolDir, grown),
		h.whileHeld(helperCall("relun", "11", "3", "1", poolDir+"/v1.img", "wait", lunParams(testPrefix+":v1"))),
	)
	h.ini.onRescan = func() {
		if h.held {
			t.Error("rescan ran while this host's writes were held")
		}
	}
	v, err := h.b.ExpandHeld(ctx, "v1", 2*gib, h.hold)
	if err != nil {
		t.Fatal(err)
	}
	if v.SizeBytes != 2*gib || h.holds != 1 {
		t.Fatalf("ExpandHeld = %+v after %d holds", v, h.holds)
	}
	want := iscsi.Target{IQN: r.IQN, Portals: []string{testPortal}, LUN: 1}
	if len(h.ini.rescans) != 1 || h.ini.rescans[0].IQN != want.IQN || h.ini.rescans[0].LUN != 1 || h.ini.rescans[0].Portals[0] != testPortal {
		t.Fatalf("rescans %+v; want one of %+v", h.ini.rescans, want)
	}
}

// Another initiator logged in besides this host: refused in one sentence
// naming it, before anything changes (no grow, no hold, no rescan). A
// plain Expand refuses this host's own session as before.
func TestExpandRefusesWhileOthersAreLoggedIn(t *testing.T) {
	r := claim(rec("v1"))
	both := exported(3, r)
	both.sessions = []session{{id: 7, initiator: me, conns: []int{0}}, {id: 8, initiator: other, conns: []int{0}}}
	mine := exported(3, r)
	mine.sessions = []session{{id: 7, initiator: me, conns: []int{0}}}
	h := newHeldEnv(t,
		lockCall("expand", "v1"), scanCall("v1", vol(poolDir, r)), showCall(both),
		lockCall("expand", "v1"), scanCall("v1", vol(poolDir, r)), showCall(mine),
	)
	_, err := h.b.ExpandHeld(ctx, "v1", 2*gib, h.hold)
	if !errors.Is(err, sentinel.ErrInUse) || !strings.Contains(err.Error(), "initiator "+other+" is logged in to its iSCSI target besides this host") || strings.Contains(err.Error(), me) {
		t.Fatalf("ExpandHeld with another initiator = %v", err)
	}
	_, err = h.b.Expand(ctx, "v1", 2*gib)
	if !errors.Is(err, sentinel.ErrInUse) || !strings.Contains(err.Error(), "initiator "+me+" is logged in") {
		t.Fatalf("Expand under this host's session = %v", err)
	}
	if h.holds != 0 || len(h.ini.rescans) != 0 {
		t.Fatalf("refused grows held %d times, rescanned %d", h.holds, len(h.ini.rescans))
	}
}

// No session at all: ExpandHeld grows like Expand — the LUN re-added
// without holding anything (nor waiting for commands in flight: there
// are none) and no rescan (nobody here is logged in).
func TestExpandHeldWithoutASessionNeedsNoHold(t *testing.T) {
	r := claim(rec("v1"))
	grown := r
	grown.SizeBytes = 2 * gib
	h := newHeldEnv(t,
		lockCall("expand", "v1"),
		scanCall("v1", vol(poolDir, r)),
		showCall(exported(3, r)),
		helperCall("grow", poolDir+"/v1.img", "2147483648"),
		writeCall(poolDir, grown),
		helperCall("relun", "11", "3", "1", poolDir+"/v1.img", "once", lunParams(testPrefix+":v1")),
	)
	if _, err := h.b.ExpandHeld(ctx, "v1", 2*gib, h.hold); err != nil {
		t.Fatal(err)
	}
	if h.holds != 0 || len(h.ini.rescans) != 0 {
		t.Fatalf("held %d times, rescanned %d", h.holds, len(h.ini.rescans))
	}
}

// The helper's relun refusals: commands in flight when nobody was to be
// logged in (exit 4) is ErrInUse; a LUN deleted but not added again
// (exit 6) says the target exports no LUN until the next attach.
func TestExpandRelunRefusals(t *testing.T) {
	for _, tc := range []struct {
		code int
		want string
		is   error
	}{
		{4, "tgt refuses to change LUN 1 of iSCSI target " + testPrefix + ":v1 while commands are in flight", sentinel.ErrInUse},
		{6, "the target exports no LUN until the volume's next attach exports it again", nil},
	} {
		r := claim(rec("v1"))
		grown := r
		grown.SizeBytes = 2 * gib
		relun := helperCall("relun", "11", "3", "1", poolDir+"/v1.img", "once", lunParams(testPrefix+":v1"))
		relun.Code = tc.code
		e := newEnv(t, nil,
			lockCall("expand", "v1"),
			scanCall("v1", vol(poolDir, r)),
			showCall(exported(3, r)),
			helperCall("grow", poolDir+"/v1.img", "2147483648"),
			writeCall(poolDir, grown),
			relun,
		)
		_, err := e.b.Expand(ctx, "v1", 2*gib)
		if err == nil || !strings.Contains(err.Error(), tc.want) || (tc.is != nil && !errors.Is(err, tc.is)) {
			t.Errorf("relun exit %d: Expand = %v; want %q", tc.code, err, tc.want)
		}
	}
}
