package backends

import (
	"errors"
	"testing"

	"github.com/blockvol/blockvol/internal/sentinel"
)

func TestUnavailableSaysWhyAndIsNeverNotFound(t *testing.T) {
	cause := errors.New("read ssh key /etc/blockvol/id_ed25519: no such file or directory")
	b := Unavailable("target", ScopeGlobal, cause)
	if b.Scope() != ScopeGlobal {
		t.Fatalf("scope %q", b.Scope())
	}
	_, err := b.Get(t.Context(), "v")
	if !errors.Is(err, cause) || errors.Is(err, sentinel.ErrNotFound) {
		t.Fatalf("Get = %v; want the cause, never not-found", err)
	}
	want := "backend target is unavailable: read ssh key /etc/blockvol/id_ed25519: no such file or directory"
	if err.Error() != want {
		t.Fatalf("message %q, want %q", err, want)
	}
	if _, err := b.Attach(t.Context(), "v", AttachOptions{}); !errors.Is(err, cause) {
		t.Fatalf("Attach = %v", err)
	}
	if err := b.(Checker).Check(t.Context()); !errors.Is(err, cause) {
		t.Fatalf("Check = %v", err)
	}
}
