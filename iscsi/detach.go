package iscsi

import (
	"context"
	"fmt"

	"github.com/blockvol/blockvol/internal/mounttable"
	"github.com/blockvol/blockvol/internal/sentinel"
)

// Detach releases t.LUN from this host.
//
// It first refuses (sentinel.ErrInUse) when the LUN's own device is still in use:
// mounted, or a partition of it mounted or held, or held by anything but an
// unused multipath map. Then it decides about the target's sessions (those
// through t.Portals, on Config.Iface): they are kept when another LUN of the
// target on them is in use — its device, a partition of it or a multipath
// map over it appears as a mount source in mountinfo or has holders — or
// when Config.TargetInUse says so. Keeping the sessions, Detach removes this
// LUN's SCSI devices from the kernel (unless a multipath map still holds
// them), leaves the node records alone (iscsiadm refuses to delete the
// record of a running session), and succeeds.
//
// Otherwise each portal is logged out and its node record deleted (-o
// delete). A portal without session or record is success (iscsiadm exit 21).
// A failed logout is an error naming the portal, and that portal's record is
// kept; the other portals are still processed.
func (i *Initiator) Detach(ctx context.Context, t Target) error {
	portals, err := validate(t)
	if err != nil {
		return err
	}
	unlock, err := i.locks.Lock(ctx, t.IQN)
	if err != nil {
		return fmt.Errorf("detach iSCSI target %s: %w", t.IQN, err)
	}
	defer unlock()

	own, others, err := i.lunDevices(t, portals)
	if err != nil {
		return err
	}
	keep, err := i.whyKeepSessions(t, own, others)
	if err != nil {
		return err
	}
	if keep != "" {
		i.log.Info("keeping iSCSI sessions: another LUN of the target is in use",
			"iqn", t.IQN, "lun", t.LUN, "reason", keep)
		i.removeDevices(t, own)
		i.held.remove(t.IQN, t.LUN)
		return nil
	}
	if err := i.logoutAll(ctx, t, portals); err != nil {
		return err
	}
	i.held.remove(t.IQN, t.LUN)
	return nil
}

// lunDevices returns the disks of the target's sessions on portals: those
// of LUN t.LUN, and the others.
func (i *Initiator) lunDevices(t Target, portals []portal) (own, others []lunDevice, err error) {
	sessions, err := i.targetSessions(t.IQN, portals)
	if err != nil {
		return nil, nil, fmt.Errorf("detach iSCSI LUN %d of %s: %w", t.LUN, t.IQN, err)
	}
	for _, s := range sessions {
		for _, d := range i.devices(s) {
			if d.lun == t.LUN {
				own = append(own, d)
			} else {
				others = append(others, d)
			}
		}
	}
	return own, others, nil
}

// whyKeepSessions returns why the target's sessions must stay after LUN
// t.LUN is detached ("" when they can go), or an error when LUN t.LUN is
// still in use or its use cannot be told.
func (i *Initiator) whyKeepSessions(t Target, own, others []lunDevice) (string, error) {
	if len(own)+len(others) > 0 {
		mounts, err := mounttable.Read(i.cfg.MountInfoPath)
		if err != nil {
			// Without the mount table nothing can be said about use: do
			// not log out blindly.
			return "", fmt.Errorf("detach iSCSI LUN %d of %s: cannot tell whether the target's LUNs are in use: %w", t.LUN, t.IQN, err)
		}
		u := usage{i: i, mounts: mounts}
		for _, d := range own {
			if why := u.whyBusy(d.name); why != "" {
				return "", fmt.Errorf("iSCSI LUN %d of %s is still in use (%s); unmount it before detaching: %w", t.LUN, t.IQN, why, sentinel.ErrInUse)
			}
		}
		for _, d := range others {
			if why := u.whyBusy(d.name); why != "" {
				return fmt.Sprintf("LUN %d (%s) is in use: %s", d.lun, d.name, why), nil
			}
		}
	}
	if l := i.held.other(t.IQN, t.LUN); l >= 0 {
		return fmt.Sprintf("LUN %d was attached by this process and not detached yet", l), nil
	}
	if i.cfg.TargetInUse != nil && i.cfg.TargetInUse(t.IQN, t.LUN) {
		return "the caller has another LUN of the target attached", nil
	}
	return "", nil
}

// logoutAll logs out of the target on every portal and deletes its node
// records; a portal without session is no error.
func (i *Initiator) logoutAll(ctx context.Context, t Target, portals []portal) error {
	var errs []error
	for _, p := range portals {
		lt := i.cfg.LogoutTimeout
		err := i.iscsiadm(ctx, lt, opLogout, t.IQN, p, nil, i.nodeArgs(t.IQN, p, "--logout"))
		switch {
		case err == nil:
			i.log.Info("iSCSI logout done", "iqn", t.IQN, "portal", p.arg)
		case noSession(err):
			i.log.Debug("no iSCSI session to log out", "iqn", t.IQN, "portal", p.arg)
		default:
			errs = append(errs, err)
			continue
		}
		err = i.iscsiadm(ctx, lt, opNodeDelete, t.IQN, p, nil, i.nodeArgs(t.IQN, p, "-o", "delete"))
		if err != nil && !noSession(err) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errorsJoin(errs)
	}
	return nil
}

// removeDevices drops the SCSI devices of a detached LUN whose session
// stays, so that no stale disk lingers. Best effort: failures are logged.
func (i *Initiator) removeDevices(t Target, own []lunDevice) {
	for _, d := range own {
		if dm, ok := i.multipathHolder(d.name); ok {
			i.log.Warn("multipath map still holds the detached iSCSI LUN; leaving its paths in place",
				"iqn", t.IQN, "lun", t.LUN, "device", d.name, "map", dm)
			continue
		}
		if err := deleteSCSIDevice(d); err != nil {
			i.log.Warn("could not remove the SCSI device of the detached iSCSI LUN",
				"iqn", t.IQN, "lun", t.LUN, "device", d.name, "error", err.Error())
			continue
		}
		i.log.Info("removed the SCSI device of the detached iSCSI LUN", "iqn", t.IQN, "lun", t.LUN, "device", d.name, "scsi", d.hctl)
	}
}
