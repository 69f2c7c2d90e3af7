package cinder

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/iscsi"
)

// Fencing after a takeover.
//
// Force-detaching a volume makes Cinder remove the old host's export, but
// that alone does not keep the old host out: Cinder's TgtAdm helper
// exports the volume again for the new host under the same IQN, with the
// same CHAP account (kept in the volume's provider_auth) and no initiator
// ACL, so an old host that was only frozen logs in again when it resumes
// and its queued writes reach the volume (seen on real kernels, test/vm
// TestMultiHost/Cinder/Failover). So a host that took a volume over
// reserves it once logged in: a SCSI-3 persistent reservation, Write
// Exclusive – Registrants Only, with this host's key; every write of any
// other host's session is refused by the target (RESERVATION CONFLICT).
// The reservation is given up when the volume is detached here.
//
// What it costs: targets bind registrations to the iSCSI session (tgt: to
// the session's TSIH), so when this host's own session is re-established
// after an outage, its writes to a volume it took over are refused until
// the volume is attached here again (unmount and mount). Volumes attached
// without a takeover are not reserved. A target without persistent
// reservations is used unfenced, with a warning.

// fenceKey is this host's reservation key: from its HostUUID, never 0.
func (b *Backend) fenceKey() uint64 {
	sum := sha256.Sum256([]byte("blockvol-pr:" + b.hostUUID))
	if k := binary.BigEndian.Uint64(sum[:8]); k != 0 {
		return k
	}
	return 1
}

// fence reserves dev for this host after a takeover.
func (b *Backend) fence(ctx context.Context, dev string, log *slog.Logger) error {
	r, ok := b.ini.(backends.Reserver)
	if !ok {
		log.Warn("volume taken over without fencing: this initiator cannot reserve devices; the previous host could still write to it if it is alive")
		return nil
	}
	err := r.Reserve(ctx, dev, b.fenceKey())
	if errors.Is(err, iscsi.ErrNoReservations) {
		log.Warn("volume taken over without fencing: the target has no SCSI persistent reservations; the previous host could still write to it if it is alive", "device", dev)
		return nil
	}
	if err != nil {
		return fmt.Errorf("fence the previous host off the volume: %w", err)
	}
	log.Info("volume reserved for this host: other hosts' writes are refused", "device", dev)
	return nil
}

// unfenceTimeout bounds giving a reservation up at detach: the device is
// looked up (a login if the session is gone), which must not hold a
// detach up when the target is unreachable.
const unfenceTimeout = 10 * time.Second

// unfence gives this host's reservation of a volume it took over up,
// before logging out; a failure is logged, never returned (the target's
// export goes with the detach in Cinder's own helpers).
func (b *Backend) unfence(ctx context.Context, t iscsi.Target, log *slog.Logger) {
	r, ok := b.ini.(backends.Reserver)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, unfenceTimeout)
	defer cancel()
	dev, err := b.ini.Attach(ctx, t)
	if err == nil {
		err = r.Unreserve(ctx, dev, b.fenceKey())
	}
	if err != nil {
		log.Warn("cannot give this host's reservation of the volume up", "error", err.Error())
	}
}
