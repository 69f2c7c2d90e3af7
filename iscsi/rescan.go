package iscsi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/blockvol/blockvol/internal/quote"
)

// Rescan makes this host re-read the capacity of t's LUN after the
// target grew it (what `iscsiadm -m session -R` does for every LUN of a
// session): "1" to the rescan attribute of the LUN's SCSI disk on each
// session of t, no logout, no login. A target without a session here is
// success: there is nothing to re-read. A dm multipath map over the
// rescanned paths then takes the new size from multipathd (`multipathd
// resize map NAME`, once the paths are all rescanned; a path's new size
// alone does not change the map's).
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
	var maps []string
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
			if dm, ok := i.multipathHolder(d.name); ok && !slices.Contains(maps, dm) {
				maps = append(maps, dm)
			}
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	for _, dm := range maps {
		if err := i.resizeMap(ctx, dm); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// resizeMapTimeout bounds `multipathd resize map`.
const resizeMapTimeout = 30 * time.Second

// resizeMap makes multipathd give dm multipath map dm (dm-N) the size of
// its paths.
func (i *Initiator) resizeMap(ctx context.Context, dm string) error {
	name := readAttr(i.sys("block", dm, "dm", "name"))
	if name == "" {
		return fmt.Errorf("multipath map %s over the rescanned LUN has no name in sysfs; resize it with multipathd resize map", dm)
	}
	cctx, cancel := context.WithTimeout(ctx, resizeMapTimeout)
	defer cancel()
	out, err := i.run.Run(cctx, "multipathd", "resize", "map", name)
	// multipathd's client exits 0 and answers "fail" when the daemon refuses.
	if err == nil && strings.TrimSpace(string(out)) != "ok" {
		err = fmt.Errorf("multipathd answered %q", quote.Prefix(strings.TrimSpace(string(out))))
	}
	if err != nil {
		return fmt.Errorf("multipath map %s (%s) did not take the LUN's new size: %w", name, dm, err)
	}
	i.log.Info("multipath map resized", "map", name, "device", dm)
	return nil
}

// writeAttr writes value to a sysfs attribute, as `echo value >path` does.
func writeAttr(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
