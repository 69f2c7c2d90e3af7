package iscsi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Rescan makes this host re-read the capacity of t's LUN after the
// target grew it (what `iscsiadm -m session -R` does for every LUN of a
// session): "1" to the rescan attribute of the LUN's SCSI disk on each
// session of t, no logout, no login. A target without a session here is
// success: there is nothing to re-read. A multipath map over the paths
// takes the new size when `multipathd resize map` is run, which this does
// not do.
func (i *Initiator) Rescan(ctx context.Context, t Target) error {
	portals, err := validate(t)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	ss, err := i.targetSessions(t.IQN, portals)
	if err != nil {
		return fmt.Errorf("rescan iSCSI target %s: %w", t.IQN, err)
	}
	var errs []error
	for _, s := range ss {
		for _, d := range i.devices(s) {
			if d.lun != t.LUN {
				continue
			}
			if err := writeAttr(filepath.Join(d.scsiDir, "rescan"), "1"); err != nil {
				errs = append(errs, fmt.Errorf("rescan %s (%s): %w", d.name, d.hctl, err))
				continue
			}
			i.log.Info("LUN rescanned", "target", t.IQN, "lun", t.LUN, "device", d.name)
		}
	}
	return errors.Join(errs...)
}

func writeAttr(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
