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
// One lock per volume on the target host: the file
// <default pool>/.blockvol.lock.<volume> guards every change to that
// volume (its record, backing file, target and ACL) made by any agent, so
// that changes to different volumes never wait for each other. It is
// taken with flock(1) by a holder program that runs on the target host
// for as long as the agent needs the lock:
//
//	flock -s -w WAIT -E 75 -- GLOBAL  flock -w WAIT -E 75 -- LOCK  timeout HOLD  sh -c HELPER hold LOCK OWNER
//
// GLOBAL is <default pool>/.blockvol.lock, the one lock of every volume
// that earlier versions took exclusively: taking it shared keeps an agent
// of an earlier version and one of this version from changing a volume at
// the same time during an upgrade, and costs nothing otherwise.
//
// The holder writes OWNER (host, pid, operation, volume, time) into the
// volume's lock file, prints "locked", and waits for the end of its
// standard input. The agent releases the lock by closing that input. The
// kernel drops a flock when its holder exits, so a lock is never left
// behind:
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
// in the lock file. Within one agent, operations on one volume take turns
// before they ask the target host (see withLock). Lock files stay when
// their volume is removed: deleting a lock file that another agent may
// have open would let two holders in.
//
// What volumes share on the target host is safe without a common lock:
// target ids (export retries when another agent took the id it chose),
// the CHAP account (created once; "already exists" is success).
//
// Every agent sharing a target host must configure the same pools: the
// lock files live in the default pool's directory.

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
	// maxHeldLocks bounds the locks one agent holds at once: each holder
	// keeps an SSH session open (sshhost allows 8 by default), and the
	// work under the locks needs sessions too.
	maxHeldLocks = 4
	// lockFileName is the lock earlier versions took for every volume,
	// in the default pool's directory; a volume's own lock file is
	// lockFileName + "." + its name.
	lockFileName = ".blockvol.lock"
)

// volumeLock is the lock file of volume name.
func (b *Backend) volumeLock(name string) string { return b.lockFile + "." + name }

// withLock runs fn while holding volume name's lock on the target host.
// fn's context ends before the lock can expire.
//
// Within this process the lock of one volume is taken by one operation at
// a time, and at most maxHeldLocks locks are held at once: operations
// waiting in flock on the target host would otherwise each hold an SSH
// session, and could use up the sessions the holders need for their work.
func (b *Backend) withLock(ctx context.Context, op, name string, fn func(ctx context.Context) error) error {
	wait := b.lockWait
	if dl, ok := ctx.Deadline(); ok {
		// Leave a little of the call's time to report the failure.
		wait = min(wait, time.Until(dl)-time.Second)
	}
	wait = max(wait, 100*time.Millisecond)
	start := time.Now()
	lctx, cancel := context.WithTimeout(ctx, wait)
	unlock, err := b.localLocks.Lock(lctx, name)
	cancel()
	switch {
	case err != nil && ctx.Err() != nil:
		return fmt.Errorf("wait for the target host's lock of volume %s: %w", name, ctx.Err())
	case err != nil:
		b.holderMu.Lock()
		holder := b.holders[name]
		b.holderMu.Unlock()
		return fmt.Errorf("the target host's lock %s is still held after %s by this host (%s); try again later", b.volumeLock(name), wait, holder)
	}
	defer unlock()
	// A turn at holding a lock is this host's own queue: it is waited
	// for up to the call's deadline, and the wait on the target host is
	// counted from when it comes.
	if err := b.heldLocks.Acquire(ctx); err != nil {
		return fmt.Errorf("wait for a turn at the target host's lock of volume %s (this host holds %d locks): %w", name, maxHeldLocks, err)
	}
	defer b.heldLocks.Release()
	wait = b.lockWait
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl)-time.Second)
	}
	start = time.Now()
	owner := fmt.Sprintf("host %s pid %d: %s volume %s since %s", b.hostName, b.pid, op, name, b.now().UTC().Format(time.RFC3339))
	b.holderMu.Lock()
	b.holders[name] = owner
	b.holderMu.Unlock()
	defer func() {
		b.holderMu.Lock()
		delete(b.holders, name)
		b.holderMu.Unlock()
	}()
	// What is left of the wait, to 100 ms.
	wait = max(wait-time.Since(start), 100*time.Millisecond).Round(100 * time.Millisecond)
	line, release, err := b.host.Hold(ctx, "flock", b.lockArgv(name, owner, wait)...)
	if err != nil {
		if hostexec.ExitCode(err) == lockExitBusy {
			return fmt.Errorf("the target host's lock %s is still held after %s (holder: %s); try again later", b.volumeLock(name), wait, b.lockOwner(ctx, name))
		}
		return fmt.Errorf("take the target host's lock %s: %w", b.volumeLock(name), err)
	}
	if line != "locked" {
		_ = release()
		return fmt.Errorf("take the target host's lock %s: the holder said %q, not \"locked\"", b.volumeLock(name), line)
	}
	wctx, cancel := context.WithTimeout(ctx, b.lockHold-min(maxLockMargin, b.lockHold/4))
	err = fn(wctx)
	cancel()
	if rerr := release(); rerr != nil {
		b.log.Error("the target host's lock ended badly; it may have expired before the operation ended",
			slog.String("lock", b.volumeLock(name)), slog.String("op", op), slog.String("volume", name), slog.Any("error", rerr))
	}
	return err
}

// lockArgv is flock's argv for the holder of volume name's lock (see the
// lock design above).
func (b *Backend) lockArgv(name, owner string, wait time.Duration) []string {
	lock := b.volumeLock(name)
	argv := []string{"-s", "-w", seconds(wait), "-E", strconv.Itoa(lockExitBusy), "--", b.lockFile,
		"flock", "-w", seconds(wait), "-E", strconv.Itoa(lockExitBusy), "--", lock,
		"timeout", seconds(b.lockHold)}
	return append(argv, helperArgv("hold", lock, owner)...)
}

// lockOwner says who holds volume name's lock: the owner written in its
// lock file, else in the lock of earlier versions, else "unknown".
func (b *Backend) lockOwner(ctx context.Context, name string) string {
	for _, f := range []string{b.volumeLock(name), b.lockFile} {
		out, err := b.host.Run(context.WithoutCancel(ctx), "sh", helperArgv("owner", f)[1:]...)
		if o := strings.TrimSpace(string(out)); err == nil && o != "" {
			return o
		}
	}
	return "unknown"
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
