package hostexec

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestOSHold(t *testing.T) {
	// The program holds until its stdin closes, like the target-host lock.
	line, release, err := OS{}.Hold(t.Context(), "sh", "-c", "echo locked; cat >/dev/null; echo bye >&2; exit 3")
	if err != nil || line != "locked" {
		t.Fatalf("Hold = %q, %v", line, err)
	}
	err = release()
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 3 || ee.Stderr != "bye\n" {
		t.Fatalf("release = %v; want the program's exit 3 and its stderr", err)
	}

	_, _, err = OS{}.Hold(t.Context(), "sh", "-c", "echo 'lock busy' >&2; exit 75")
	if ExitCode(err) != 75 {
		t.Fatalf("a program that exits before its line: %v", err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, _, err = OS{}.Hold(ctx, "sleep", "30")
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 10*time.Second {
		t.Fatalf("Hold past its deadline = %v after %v", err, time.Since(start))
	}
}
