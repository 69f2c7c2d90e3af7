package hostexec

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestOSRun(t *testing.T) {
	out, err := OS{}.Run(t.Context(), "sh", "-c", "printf out; printf err >&2")
	if err != nil || string(out) != "out" {
		t.Fatalf("Run = %q, %v", out, err)
	}
	_, err = OS{}.Run(t.Context(), "sh", "-c", "echo 'no such device' >&2; exit 2")
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 2 || ExitCode(err) != 2 {
		t.Fatalf("exit 2: %v", err)
	}
	if err.Error() != "sh exited with status 2: no such device" {
		t.Fatalf("message %q", err)
	}
	_, err = OS{}.Run(t.Context(), "/nonexistent/tool")
	if err == nil || ExitCode(err) != -1 || !strings.Contains(err.Error(), "/nonexistent/tool") {
		t.Fatalf("missing program: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = OS{}.Run(ctx, "sleep", "10")
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("timeout: %v after %v", err, time.Since(start))
	}
}

type recTB struct{ errs []string }

func (r *recTB) Helper() {}
func (r *recTB) Errorf(f string, a ...any) {
	r.errs = append(r.errs, f)
}

func TestFakeReportsWrongAndMissingCalls(t *testing.T) {
	tb := &recTB{}
	f := NewFake(tb, Call{Argv: []string{"blkid", "-p", "/dev/x"}, Code: 2}, Call{Argv: []string{"mkfs.ext4", "/dev/x"}})
	_, err := f.Run(t.Context(), "blkid", "-p", "/dev/x")
	if ExitCode(err) != 2 {
		t.Fatalf("scripted exit code not returned: %v", err)
	}
	if _, err := f.Run(t.Context(), "mkfs.xfs", "/dev/x"); err == nil {
		t.Fatal("a call with the wrong argv succeeded")
	}
	f.Done()
	if _, err := f.Run(t.Context(), "extra"); err == nil {
		t.Fatal("an unscripted call succeeded")
	}
	if len(tb.errs) != 2 {
		t.Fatalf("fake reported %d problems, want 2 (wrong argv, extra call): %v", len(tb.errs), tb.errs)
	}
}
