package cinder

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/iscsi"
)

// reservingInitiator is a fakeInitiator that can reserve devices.
type reservingInitiator struct {
	fakeInitiator
	mu                   sync.Mutex
	reserved, unreserved []string // "dev key"
	reserveErr           error
}

func (r *reservingInitiator) Reserve(_ context.Context, dev string, key uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reserved = append(r.reserved, dev)
	return r.reserveErr
}

func (r *reservingInitiator) Unreserve(_ context.Context, dev string, key uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.unreserved = append(r.unreserved, dev)
	return nil
}

// TestCloudTakeoverFences: a volume attached normally is not reserved; one
// taken over is reserved once logged in, again when attached anew, and
// given up at detach. A target without reservations is used unfenced.
func TestCloudTakeoverFences(t *testing.T) {
	requireCloud(t)
	iniA := &reservingInitiator{fakeInitiator: fakeInitiator{name: "iqn.2024-01.test:host-a"}}
	iniB := &reservingInitiator{fakeInitiator: fakeInitiator{name: "iqn.2024-01.test:host-b"}}
	a := newCloudBackend(t, adminConfig("host-a", AttachAuto), &iniA.fakeInitiator)
	a.ini = iniA
	b := newCloudBackend(t, adminConfig("host-b", AttachAuto), &iniB.fakeInitiator)
	b.ini = iniB
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	name := volName(t)
	mustRemove(t, a, name)
	if _, err := a.Create(ctx, backends.CreateRequest{Name: name, SizeBytes: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Attach(ctx, name, backends.AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	if len(iniA.reserved) != 0 {
		t.Errorf("a plain attach reserved %v", iniA.reserved)
	}
	dev, err := b.Attach(ctx, name, backends.AttachOptions{Preempt: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(iniB.reserved) != 1 || iniB.reserved[0] != dev {
		t.Errorf("the takeover reserved %v; want [%s]", iniB.reserved, dev)
	}
	if _, err := b.Attach(ctx, name, backends.AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	if len(iniB.reserved) != 2 {
		t.Errorf("attaching the taken-over volume again reserved %v; want it reserved again", iniB.reserved)
	}
	if err := b.Detach(ctx, name); err != nil {
		t.Fatal(err)
	}
	if len(iniB.unreserved) != 1 {
		t.Errorf("detach gave up %v; want the reservation of %s", iniB.unreserved, dev)
	}
	if err := a.Detach(ctx, name); err != nil {
		t.Fatal(err)
	}

	// Without reservations at the target: attached all the same.
	if _, err := a.Attach(ctx, name, backends.AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	iniB.reserveErr = iscsi.ErrNoReservations
	if _, err := b.Attach(ctx, name, backends.AttachOptions{Preempt: true}); err != nil {
		t.Fatalf("takeover on a target without reservations: %v", err)
	}
	if err := b.Detach(ctx, name); err != nil {
		t.Fatal(err)
	}
	a.Detach(ctx, name)
	if err := b.Remove(ctx, name); err != nil {
		t.Fatal(err)
	}
}
