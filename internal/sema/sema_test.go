package sema

import (
	"context"
	"errors"
	"testing"
)

func TestSema(t *testing.T) {
	s := New(2)
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if err := s.Acquire(ctx); err != nil {
			t.Fatalf("turn %d: %v", i, err)
		}
	}
	done, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.Acquire(done); !errors.Is(err, context.Canceled) {
		t.Fatalf("third turn with both held = %v, want context.Canceled", err)
	}
	if len(s) != 2 {
		t.Fatalf("a failed Acquire holds a turn: %d held, want 2", len(s))
	}
	got := make(chan error, 1)
	go func() { got <- s.Acquire(ctx) }()
	s.Release()
	if err := <-got; err != nil {
		t.Fatalf("a waiter was not let in by Release: %v", err)
	}
}
