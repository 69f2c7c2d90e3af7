package volumes

import (
	"fmt"
	"log/slog"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/quote"
	"github.com/blockvol/blockvol/internal/sentinel"
)

// A volume is lost to this host when this host still has it mounted for
// its users but the backend's claim (backends.Attachment) names another
// host, or none: another host took it over with preempt and fenced this one
// off, so the mount here is stale and its writes never reach the volume.
//
// This host learns it whenever it asks the backend about a volume it has
// in use — Get, List, any Mount of a volume it has a record of, the last
// Unmount when its release fails — and from Watch's ticker for backends
// that reconcile
// (backends.Reconciler). The backend is the truth, so nothing about it is
// persisted here. What follows:
//   - Get and List report the volume's Local as Lost, naming the host that
//     holds it now, and without a mountpoint;
//   - a Mount is refused in one sentence naming that host, and never
//     attaches again (an Attach with preempt would write the claim back and
//     fence the host that holds it now);
//   - the last Unmount releases this host's side (unmount, log out) and
//     does not fail when that cannot be finished now: the volume is no
//     longer this host's to keep, and Watch retries the release every
//     tick (as do the next operation and a restart);
//   - one WARN line says so, once per loss.

// lostTo reports whether att, the backend's claim of a volume that this
// host has in use as r says, no longer names this host, and who it names.
func lostTo(r record, att *backends.Attachment) (holder string, lost bool) {
	if len(r.Users) == 0 || !att.Lost() {
		return "", false
	}
	return att.Holder, true
}

// noteLost logs, once per loss, that the volume was taken from this host.
func (d *Core) noteLost(log *slog.Logger, r record, holder string) {
	d.lostMu.Lock()
	old, seen := d.lost[r.Name]
	if d.lost == nil {
		d.lost = map[string]string{}
	}
	d.lost[r.Name] = holder
	d.lostMu.Unlock()
	if seen && old == holder {
		return
	}
	log.Warn("volume taken over by another host while mounted here: this host is fenced off from it, and its mount here is stale until its users unmount it",
		"holder", orNone(holder), "mountpoint", r.Mountpoint, "device", r.Device, "users", len(r.Users))
}

// forgetLost ends a loss: this host's side of the volume is released.
func (d *Core) forgetLost(name string) {
	d.lostMu.Lock()
	delete(d.lost, name)
	d.lostMu.Unlock()
}

// lostError is the refusal of a Mount of a lost volume.
func lostError(name, holder string) error {
	who := "another host took it over"
	if holder != "" {
		who = "host " + holder + " took it over"
	}
	return &userError{kind: sentinel.ErrInUse, msg: fmt.Sprintf(
		"volume %s is lost to this host: %s while it was mounted here, and this host is fenced off from it; unmount it here (docker rm its containers), then mount it again with preempt to take it back",
		quote.Short(name), who)}
}

// markLost notes the volume lost, and sets l (when not nil) lost, when
// att, the backend's claim fetched while the record was still seq
// (unchanged since: no operation of this host's own came between), no
// longer names this host.
func (d *Core) markLost(log *slog.Logger, name string, seq uint64, l *Local, att *backends.Attachment) {
	r, ok := d.recs.get(name)
	if !ok || r.seq != seq || r.Phase != phaseMounted {
		return
	}
	holder, lost := lostTo(r, att)
	if !lost {
		return
	}
	if l != nil {
		l.Lost, l.HeldBy = true, holder
	}
	d.noteLost(log, r, holder)
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
