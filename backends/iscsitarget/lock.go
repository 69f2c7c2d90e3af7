package iscsitarget

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/blockvol/blockvol/hostexec"
)

// Lock design (see also the package comment).
//
// One lock file on the target host, <default pool>/.blockvol.lock, guards
// every change to volumes (records, backing files, targets, ACLs) made by
// any agent. It is taken with flock(1) by a holder program that runs on
// the target host for as long as the agent needs the lock:
//
//	flock -w WAIT -E 75 -- LOCK  timeout HOLD  sh -c HELPER hold LOCK OWNER
//
// The holder writes OWNER (host, pid, operation, volume, time) into the
// lock file, prints "locked", and waits for the end of its standard input.
// The agent releases the lock by closing that input. The kernel drops a
// flock when its holder exits, so a lock is never left behind:
//
//   - the agent exits or crashes: its end of the pipe (local) or its SSH
//     connection closes, the holder reads end-of-file and exits;
//   - the agent hangs, or its host vanishes without closing the TCP
//     connection: `timeout HOLD` ends the holder after HOLD (2 minutes).
//     The agent bounds all its work under the lock to HOLD minus a margin,
//     so it never acts after the lock could have expired.
//
// An agent that cannot get the lock within WAIT (lock_timeout, at most
// until its call's deadline) fails with an error naming the owner found
// in the lock file. Within one agent, operations take turns before they
// ask the target host (see withLock).
//
// Every agent sharing a target host must configure the same pools: the
// lock file lives in the default pool's directory.

const (
	// lockExitBusy is flock's exit status when WAIT runs out (-E).
	lockExitBusy = 75
	// defaultLockWait bounds the wait for the lock.
	defaultLockWait = 30 * time.Second
	// defaultLockHold bounds how long a holder keeps the lock.
	defaultLockHold = 2 * time.Minute
	// maxLockMargin is kept (at most; a quarter of the hold when that is
	// shorter) between the end of our work under the lock and the earliest
	// moment the holder may end on its own.
	maxLockMargin = 10 * time.Second
	// lockFileName is the lock file, in the default pool's directory.
	lockFileName = ".blockvol.lock"
)

// withLock runs fn while holding the target host's lock. fn's context ends
// before the lock can expire.
//
// Within this process the lock is taken by one operation at a time (the
// lock on the target host is one anyway): operations waiting in flock on
// the target host would otherwise each hold an SSH session, and could use
// up the sessions the lock's holder needs for its work.
func (b *Backend) withLock(ctx context.Context, op, name string, fn func(ctx context.Context) error) error {
	wait := b.lockWait
	if dl, ok := ctx.Deadline(); ok {
		// Leave a little of the call's time to report the failure.
		wait = min(wait, time.Until(dl)-time.Second)
	}
	wait = max(wait, 100*time.Millisecond)
	start := time.Now()
	timer := time.NewTimer(wait)
	select {
	case b.localLock <- struct{}{}:
		timer.Stop()
	case <-ctx.Done():
		timer.Stop()
		return fmt.Errorf("wait for the target host's lock: %w", ctx.Err())
	case <-timer.C:
		b.holderMu.Lock()
		holder := b.holder
		b.holderMu.Unlock()
		return fmt.Errorf("the target host's lock %s is still held after %s by this host (%s); try again later", b.lockFile, wait, holder)
	}
	owner := fmt.Sprintf("host %s pid %d: %s volume %s since %s", b.hostName, b.pid, op, name, b.now().UTC().Format(time.RFC3339))
	b.holderMu.Lock()
	b.holder = owner
	b.holderMu.Unlock()
	defer func() { <-b.localLock }()
	// What is left of the wait, to 100 ms.
	wait = max(wait-time.Since(start), 100*time.Millisecond).Round(100 * time.Millisecond)
	argv := []string{"-w", seconds(wait), "-E", strconv.Itoa(lockExitBusy), "--", b.lockFile,
		"timeout", seconds(b.lockHold)}
	argv = append(argv, helperArgv("hold", b.lockFile, owner)...)
	line, release, err := b.host.Hold(ctx, "flock", argv...)
	if err != nil {
		if hostexec.ExitCode(err) == lockExitBusy {
			holder := "unknown"
			if out, oerr := b.host.Run(context.WithoutCancel(ctx), "sh", helperArgv("owner", b.lockFile)[1:]...); oerr == nil && strings.TrimSpace(string(out)) != "" {
				holder = strings.TrimSpace(string(out))
			}
			return fmt.Errorf("the target host's lock %s is still held after %s (holder: %s); try again later", b.lockFile, wait, holder)
		}
		return fmt.Errorf("take the target host's lock %s: %w", b.lockFile, err)
	}
	if line != "locked" {
		_ = release()
		return fmt.Errorf("take the target host's lock %s: the holder said %q, not \"locked\"", b.lockFile, line)
	}
	wctx, cancel := context.WithTimeout(ctx, b.lockHold-min(maxLockMargin, b.lockHold/4))
	err = fn(wctx)
	cancel()
	if rerr := release(); rerr != nil {
		b.log.Error("the target host's lock ended badly; it may have expired before the operation ended",
			slog.String("lock", b.lockFile), slog.String("op", op), slog.String("volume", name), slog.Any("error", rerr))
	}
	return err
}

// seconds formats d for flock -w and timeout: whole seconds when it is
// whole, else with milliseconds.
func seconds(d time.Duration) string {
	s := d.Round(time.Millisecond).Seconds()
	if s == math.Trunc(s) {
		return strconv.FormatInt(int64(s), 10)
	}
	return strconv.FormatFloat(s, 'f', -1, 64)
}
