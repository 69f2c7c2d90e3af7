package iscsitarget

import (
	"context"
	"log/slog"
	"slices"
	"strings"

	"github.com/blockvol/blockvol/backends"
)

var _ backends.Reconciler = (*Backend)(nil)

// Reconcile implements backends.Reconciler. One tgtadm run lists the
// targets; a volume whose target, LUN, CHAP binding or ACL entry for this
// host is missing (tgtd restarted and forgot them) is repaired under its
// lock from its record, and only while the record's claim names this host:
// a volume another host took over is reported lost and left alone, so that
// a fenced host never lets itself in again.
func (b *Backend) Reconcile(ctx context.Context, names []string) (backends.Reconciled, error) {
	res := backends.Reconciled{Repaired: map[string]string{}, Lost: map[string]string{}, Failed: map[string]error{}}
	me, err := b.init.InitiatorName()
	if err != nil {
		return res, err
	}
	exports, err := b.sw.list(ctx)
	if err != nil {
		return res, err
	}
	for _, name := range names {
		iqn, err := iqnFor(b.iqnPrefix, name)
		if err != nil {
			res.Failed[name] = err
			continue
		}
		if b.serves(exports[iqn], me) {
			continue
		}
		what, holder, lost, err := b.repair(ctx, name, me)
		switch {
		case err != nil:
			res.Failed[name] = opErr("reconcile", name, err)
		case lost:
			res.Lost[name] = holder
		case what != "":
			res.Repaired[name] = what
		}
	}
	return res, nil
}

// serves reports whether e lets initiator me use the volume: its LUN is
// there, me is on its ACL, and the CHAP account (if any) is bound.
func (b *Backend) serves(e *export, me string) bool {
	return e != nil && e.file != "" && slices.Contains(e.acl, me) &&
		(b.chap == nil || slices.Contains(e.accounts, b.chap.Username))
}

// repair re-creates, under the volume's lock, what its target lacks for
// this host (initiator me), when the record still names me; otherwise it
// changes nothing and reports the volume lost to the record's holder ("" for
// none). what says what was re-created ("" for nothing).
func (b *Backend) repair(ctx context.Context, name, me string) (what, holder string, lost bool, err error) {
	log := b.log.With(slog.String("volume", name), slog.String("op", "reconcile"))
	err = b.withLock(ctx, "reconcile", name, func(ctx context.Context) error {
		f, err := b.load(ctx, name)
		if err != nil {
			return err
		}
		if a := f.rec.Attached; a == nil || a.Initiator != me {
			lost = true
			if a != nil {
				holder = a.String()
			}
			return nil
		}
		exports, err := b.sw.list(ctx)
		if err != nil {
			return err
		}
		var done []string
		if e := exports[f.rec.IQN]; e == nil || e.file == "" {
			done = append(done, "iSCSI target "+f.rec.IQN+" exported again")
		}
		e, err := b.ensureExport(ctx, log, exports, f)
		if err != nil {
			return err
		}
		if !slices.Contains(e.acl, me) {
			if err := b.sw.allow(ctx, e, me); err != nil {
				return err
			}
			done = append(done, "this host allowed on it again")
		}
		what = strings.Join(done, ", ")
		return nil
	})
	return what, holder, lost, err
}
