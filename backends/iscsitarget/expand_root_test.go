package iscsitarget

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/sentinel"
)

// TestRealExpand against a real tgtd: a volume whose target has no
// session grows, and an initiator logging in afterwards reads the new
// capacity (iscsi-readcapacity16) from the same target; while an
// initiator is logged in (iscsi-perf's session, reading) the grow is
// refused in one sentence naming it and nothing changes; it never shrinks.
func TestRealExpand(t *testing.T) {
	r := newRealEnv(t)
	a := r.agent(nil, "bvsnap-node", initA, true, nil)
	ctx := context.Background()
	const name = "bvsnap-grow"
	if _, err := a.b.Create(ctx, backends.CreateRequest{Name: name, SizeBytes: 64 * mib}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.b.Remove(context.Background(), name) })
	if _, err := a.b.Attach(ctx, name, backends.AttachOptions{}); err != nil { // initA on the ACL
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.b.Detach(context.Background(), name) })
	iqn := realPrefix + ":" + name
	r.wantCapacity(initA, iqn, 64*mib)
	r.wantIdentity(iqn)

	v, err := a.b.Expand(ctx, name, 96*mib)
	if err != nil {
		t.Fatal(err)
	}
	if v.SizeBytes != 96*mib {
		t.Fatalf("Expand = %+v", v)
	}
	r.wantCapacity(initA, iqn, 96*mib)
	r.wantIdentity(iqn) // the LUN added again keeps it
	if fi, err := os.Stat(filepath.Join(r.pool, name+".img")); err != nil || fi.Size() != 96*mib {
		t.Fatalf("backing file: %v, %v", fi, err)
	}
	if got, err := a.b.Get(ctx, name); err != nil || got.SizeBytes != 96*mib {
		t.Fatalf("Get = %+v, %v", got, err)
	}
	if _, err := a.b.Expand(ctx, name, 32*mib); !errors.Is(err, sentinel.ErrInvalid) {
		t.Fatalf("shrink = %v", err)
	}

	exited := r.startSession(initA, iqn)
	_, err = a.b.Expand(ctx, name, 128*mib)
	if !errors.Is(err, sentinel.ErrInUse) || !strings.Contains(err.Error(), "initiator "+initA+" is logged in") {
		t.Fatalf("Expand under a session = %v", err)
	}
	select {
	case <-exited:
		t.Fatal("the initiator's session ended during the refused grow")
	default:
	}
	if got, _ := a.b.Get(ctx, name); got.SizeBytes != 96*mib {
		t.Fatalf("a refused grow changed the size to %d", got.SizeBytes)
	}
}
