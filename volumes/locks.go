package volumes

import (
	"context"
	"fmt"

	"github.com/blockvol/blockvol/internal/quote"

	"github.com/blockvol/blockvol/internal/sentinel"
)

// lockVolume takes the per-name lock of name: a second caller on the same
// name waits for the first (it is not refused — Docker does not retry) until
// its context ends, and then gets an error wrapping sentinel.ErrBusy.
func (d *Core) lockVolume(ctx context.Context, name string) (func(), error) {
	unlock, err := d.locks.Lock(ctx, name)
	if err != nil {
		return nil, &userError{
			kind: sentinel.ErrBusy,
			msg:  fmt.Sprintf("volume %s is busy: another operation on it did not finish in time (%v); try again", quote.Short(name), err),
			err:  err,
		}
	}
	return unlock, nil
}

// Lock validates a volume name and takes its lock, for a front door that
// must keep its own state of the volume consistent with the core's (the
// core's own operations take it themselves: never call one while holding
// it). It returns the release function, or an error wrapping sentinel.ErrInvalid or
// sentinel.ErrBusy.
func (d *Core) Lock(ctx context.Context, name string) (func(), error) {
	return d.acquire(ctx, name)
}

// acquire validates a volume name and takes its lock.
func (d *Core) acquire(ctx context.Context, name string) (func(), error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	return d.lockVolume(ctx, name)
}
