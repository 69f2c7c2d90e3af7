package iscsitarget

import (
	"maps"
	"slices"
	"testing"

	"github.com/blockvol/blockvol/hostexec"
)

func TestReconcile(t *testing.T) {
	mine := attachedTo(rec("v1"), "node1", me)
	taken := attachedTo(rec("v1"), "node2", other)
	served := exported(3, mine)
	served.acl = []string{me}
	fenced := exported(3, taken)
	fenced.acl = []string{other}
	for _, tc := range []struct {
		name           string
		calls          []hostexec.Call
		repaired, lost []string
	}{
		{
			name:  "all there: one tgtadm run, no lock",
			calls: []hostexec.Call{showCall(served)},
		},
		{
			name: "tgtd restarted: exported again, this host allowed",
			calls: []hostexec.Call{
				showCall(),
				lockCall("reconcile", "v1"),
				scanCall("v1", vol(poolDir, mine)),
				showCall(),
				tgtCall("--mode", "target", "--op", "new", "--tid", "1", "--targetname", mine.IQN),
				tgtCall("--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1", "--backing-store", poolDir+"/v1.img"),
				lunIDCall("1", testPrefix+":v1"),
				tgtCall("--mode", "target", "--op", "bind", "--tid", "1", "--initiator-name", me),
			},
			repaired: []string{"v1"},
		},
		{
			name: "this host's ACL entry gone, claim still here: allowed again",
			calls: []hostexec.Call{
				showCall(exported(3, mine)),
				lockCall("reconcile", "v1"),
				scanCall("v1", vol(poolDir, mine)),
				showCall(exported(3, mine)),
				tgtCall("--mode", "target", "--op", "bind", "--tid", "3", "--initiator-name", me),
			},
			repaired: []string{"v1"},
		},
		{
			name: "taken over by another host: nothing changed, reported lost",
			calls: []hostexec.Call{
				showCall(fenced),
				lockCall("reconcile", "v1"),
				scanCall("v1", vol(poolDir, taken)),
			},
			lost: []string{"v1"},
		},
		{
			name: "taken over, then tgtd restarted: never exported for this host",
			calls: []hostexec.Call{
				showCall(),
				lockCall("reconcile", "v1"),
				scanCall("v1", vol(poolDir, taken)),
			},
			lost: []string{"v1"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil, tc.calls...)
			res, err := e.b.Reconcile(ctx, []string{"v1"})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Failed) > 0 {
				t.Fatalf("failed: %v", res.Failed)
			}
			if got := slices.Sorted(maps.Keys(res.Repaired)); !slices.Equal(got, tc.repaired) {
				t.Errorf("repaired %v (%v); want %v", got, res.Repaired, tc.repaired)
			}
			if got := slices.Sorted(maps.Keys(res.Lost)); !slices.Equal(got, tc.lost) {
				t.Errorf("lost %v; want %v", got, tc.lost)
			}
			if h, ok := res.Lost["v1"]; ok && h != "node2 (initiator "+other+")" {
				t.Errorf("lost to %q; want node2 named", h)
			}
		})
	}
}
