package keyedlock

import (
	"context"
	"errors"
	"testing"
)

func TestSameKeyWaitsUntilReleased(t *testing.T) {
	var l Map
	unlock, err := l.Lock(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan func())
	go func() {
		u, err := l.Lock(context.Background(), "a")
		if err != nil {
			t.Error(err)
		}
		got <- u
	}()
	// Another key is free meanwhile.
	ub, err := l.Lock(context.Background(), "b")
	if err != nil {
		t.Fatalf("key b blocked by a: %v", err)
	}
	ub()
	select {
	case <-got:
		t.Fatal("second holder of a got the lock while the first held it")
	default:
	}
	unlock()
	(<-got)()
	if n := l.Len(); n != 0 {
		t.Fatalf("%d entries left after every release, want 0", n)
	}
}

func TestWaitEndsWithContext(t *testing.T) {
	var l Map
	unlock, err := l.Lock(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		_, err := l.Lock(ctx, "a")
		done <- err
	}()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock after cancel = %v, want context.Canceled", err)
	}
}

func TestEndedContextNeverTakesAFreeLock(t *testing.T) {
	var l Map
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.Lock(ctx, "a"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock with ended ctx = %v, want context.Canceled", err)
	}
	if n := l.Len(); n != 0 {
		t.Fatalf("%d entries left, want 0", n)
	}
}
