package iscsi

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"
)

// multipathCheckTimeout bounds the default multipathd check.
const multipathCheckTimeout = 5 * time.Second

// Attach logs this host in to t and returns the block device of t.LUN.
//
// Every portal is logged in at once (see loginAll): its node record is
// prepared — sendtargets discovery (with DiscoveryCHAP written to the
// discovery record first, when given) or an explicit `-o new` record —,
// the session timeouts of Config (nodeSettings) and, when t.CHAP is set
// (and only then), the session CHAP are written to the record, and the
// portal is logged in. A session that already exists (iscsiadm exit 15)
// counts as logged in; its recovery timeout is set through sysfs and the
// session is then rescanned, so that a LUN added to the target since the
// login shows up. Attach succeeds when at least one portal logs in; the
// failures of the others are logged as warnings. When every portal fails,
// the error names each one.
//
// The device is then looked up in sysfs, polling every PollInterval for up
// to DeviceTimeout. With several logged-in portals and multipathd running,
// the dm multipath map holding the paths is returned (/dev/mapper/<name>
// when present, else /dev/dm-N); without multipathd one path is returned and
// a warning says so. A single path already claimed by a multipath map yields
// the map. A path is returned as its udev /dev/disk/by-path link when that
// link resolves to it, else as /dev/sdX.
//
// Attach does not undo logins when it fails; Detach is safe to call then.
func (i *Initiator) Attach(ctx context.Context, t Target) (string, error) {
	portals, err := validate(t)
	if err != nil {
		return "", err
	}
	unlock, err := i.locks.Lock(ctx, t.IQN)
	if err != nil {
		return "", fmt.Errorf("attach iSCSI target %s: %w", t.IQN, err)
	}
	defer unlock()

	up, errs := i.loginAll(ctx, t, portals)
	if len(up) == 0 || (ctx.Err() != nil && len(errs) > 0) {
		return "", errorsJoin(errs)
	}
	for _, err := range errs {
		i.log.Warn("iSCSI portal failed; attaching through the other portals",
			"iqn", t.IQN, "lun", t.LUN, "error", err.Error())
	}

	multipath := false
	if len(up) > 1 {
		multipath = i.multipathActive(ctx)
		if !multipath {
			i.log.Warn("iSCSI target has several portals but multipathd is not running: using a single path, without failover",
				"iqn", t.IQN, "lun", t.LUN, "portals", portalList(up))
		}
	}
	dev, err := i.waitDevice(ctx, t, up, multipath)
	if err != nil {
		return "", err
	}
	i.held.add(t.IQN, t.LUN)
	i.log.Info("iSCSI LUN attached", "iqn", t.IQN, "lun", t.LUN, "device", dev, "portals", portalList(up))
	return dev, nil
}

// loginAll logs t in through every portal, the portals in parallel: first
// every node record is prepared, then each is tuned and logged in. The
// records are all prepared before any is tuned because sendtargets
// discovery through one portal rewrites the records of every portal the
// target reports, which would undo another portal's settings. It returns
// the portals logged in, in the order of portals, and the failures of the
// others.
func (i *Initiator) loginAll(ctx context.Context, t Target, portals []portal) ([]portal, []error) {
	res := make([]error, len(portals))
	i.parallel(portals, res, func(p portal) error { return i.prepare(ctx, t, p) })
	i.parallel(portals, res, func(p portal) error { return i.login(ctx, t, p) })
	var up []portal
	var errs []error
	for k, p := range portals {
		if res[k] != nil {
			errs = append(errs, res[k])
			continue
		}
		up = append(up, p)
	}
	return up, errs
}

// parallel runs f on each portal whose result in res is still nil, all at
// once, and stores the results in res.
func (i *Initiator) parallel(portals []portal, res []error, f func(portal) error) {
	var wg sync.WaitGroup
	for k, p := range portals {
		if res[k] != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[k] = f(p)
		}()
	}
	wg.Wait()
}

// prepare creates the node record of (t, p): sendtargets discovery through
// p (with the discovery CHAP written to its discovery record first), or an
// explicit record.
func (i *Initiator) prepare(ctx context.Context, t Target, p portal) error {
	secrets := secretsOf(t.CHAP, t.DiscoveryCHAP)
	lt := i.cfg.LoginTimeout
	if !t.Discovery {
		// -o new rewrites an existing record with iscsid.conf defaults,
		// which is what we want: no stale CHAP from an earlier attach.
		return i.iscsiadm(ctx, lt, opNodeNew, t.IQN, p, secrets, i.nodeArgs(t.IQN, p, "-o", "new"))
	}
	if t.DiscoveryCHAP != nil {
		if err := i.iscsiadm(ctx, lt, opDiscoveryRec, t.IQN, p, secrets, i.discoveryArgs(p, "-o", "new")); err != nil {
			return err
		}
		for _, kv := range chapSettings("discovery.sendtargets.auth.", t.DiscoveryCHAP) {
			if err := i.iscsiadm(ctx, lt, opDiscoveryRec, t.IQN, p, secrets,
				i.discoveryArgs(p, "-o", "update", "-n", kv[0], "-v", kv[1])); err != nil {
				return err
			}
		}
	}
	return i.iscsiadm(ctx, lt, opDiscovery, t.IQN, p, secrets, i.discoveryArgs(p, "--discover"))
}

// login writes the session settings (nodeSettings) and, when t.CHAP is
// set, the session CHAP to the node record of (t, p), and logs it in.
func (i *Initiator) login(ctx context.Context, t Target, p portal) error {
	secrets := secretsOf(t.CHAP, t.DiscoveryCHAP)
	lt := i.cfg.LoginTimeout
	settings := i.nodeSettings()
	if t.CHAP != nil {
		settings = append(settings, chapSettings("node.session.auth.", t.CHAP)...)
	}
	for _, kv := range settings {
		if err := i.iscsiadm(ctx, lt, opNodeUpdate, t.IQN, p, secrets,
			i.nodeArgs(t.IQN, p, "-o", "update", "-n", kv[0], "-v", kv[1])); err != nil {
			return err
		}
	}

	err := i.iscsiadm(ctx, lt, opLogin, t.IQN, p, secrets, i.nodeArgs(t.IQN, p, "--login"))
	switch {
	case err == nil:
		i.log.Info("iSCSI login done", "iqn", t.IQN, "portal", p.arg)
		return nil
	case exitStatus(err) == exitSessExists:
		i.log.Info("iSCSI session already exists; rescanning it for new LUNs", "iqn", t.IQN, "portal", p.arg)
		i.setRecoveryTimeout(t.IQN, p)
		if rerr := i.iscsiadm(ctx, lt, opRescan, t.IQN, p, secrets, i.nodeArgs(t.IQN, p, "--rescan")); rerr != nil {
			if ctx.Err() != nil {
				return rerr
			}
			i.log.Warn("iSCSI session rescan failed; looking for the LUN anyway", "iqn", t.IQN, "portal", p.arg, "error", rerr.Error())
		}
		return nil
	case timedOut(err):
		// iscsiadm was killed, but iscsid keeps retrying the login on its
		// own. No session existed for this portal (else iscsiadm would have
		// exited 15 at once), so logging it out harms no other LUN.
		i.cancelLogin(ctx, t, p)
	}
	return err
}

// cancelLogin logs portal p out after an abandoned login, best effort.
func (i *Initiator) cancelLogin(ctx context.Context, t Target, p portal) {
	err := i.iscsiadm(context.WithoutCancel(ctx), i.cfg.LogoutTimeout, opLogout, t.IQN, p, nil, i.nodeArgs(t.IQN, p, "--logout"))
	if err != nil && !noSession(err) {
		i.log.Warn("could not cancel an abandoned iSCSI login; iscsid may still complete it",
			"iqn", t.IQN, "portal", p.arg, "error", err.Error())
	}
}

// multipathActive reports whether multipathd runs (see
// Config.MultipathActive).
func (i *Initiator) multipathActive(ctx context.Context) bool {
	if i.cfg.MultipathActive != nil {
		return i.cfg.MultipathActive(ctx)
	}
	cctx, cancel := context.WithTimeout(ctx, multipathCheckTimeout)
	defer cancel()
	out, err := i.run.Run(cctx, "multipathd", "show", "daemon")
	if err != nil {
		i.log.Debug("multipathd is not answering", "error", err.Error())
		return false
	}
	f := strings.Fields(string(out)) // "pid 1234 idle"
	return len(f) >= 3 && f[0] == "pid" && f[2] != "shutdown"
}

// waitDevice polls sysfs until the LUN's device shows up.
func (i *Initiator) waitDevice(ctx context.Context, t Target, up []portal, multipath bool) (string, error) {
	dctx, cancel := context.WithTimeout(ctx, i.cfg.DeviceTimeout)
	defer cancel()
	ticker := time.NewTicker(i.cfg.PollInterval)
	defer ticker.Stop()
	for {
		dev, paths := i.lookupDevice(t, up, multipath)
		if dev != "" {
			return dev, nil
		}
		select {
		case <-ticker.C:
		case <-dctx.Done():
			if err := ctx.Err(); err != nil {
				return "", fmt.Errorf("waiting for iSCSI LUN %d of %s at %s: %w", t.LUN, t.IQN, portalList(up), err)
			}
			if multipath && len(paths) > 0 {
				return "", fmt.Errorf("multipathd did not assemble a multipath device over %s (iSCSI LUN %d of %s at %s) within %s (check multipath.conf blacklist and find_multipaths): %w",
					strings.Join(paths, ", "), t.LUN, t.IQN, portalList(up), i.cfg.DeviceTimeout, ErrDeviceNotFound)
			}
			return "", fmt.Errorf("iSCSI LUN %d of %s at %s did not appear as a block device within %s (check that the target maps LUN %d to this initiator): %w",
				t.LUN, t.IQN, portalList(up), i.cfg.DeviceTimeout, t.LUN, ErrDeviceNotFound)
		}
	}
}

// lookupDevice makes one sysfs pass. It returns the device to hand out, or
// "" and the path devices found so far.
func (i *Initiator) lookupDevice(t Target, up []portal, multipath bool) (string, []string) {
	var paths []string
	var first *lunDevice
	for _, p := range up {
		d, ok := i.pathDevice(t.IQN, p, t.LUN)
		if !ok {
			continue
		}
		paths = append(paths, d.name)
		if dm, ok := i.multipathHolder(d.name); ok {
			if dev := i.dmPath(dm); dev != "" {
				return dev, paths
			}
		}
		if first == nil {
			first = &d
		}
	}
	if first != nil && !multipath {
		return i.devicePath(t.IQN, *first), paths
	}
	return "", paths
}

func portalList(ps []portal) string {
	s := make([]string, len(ps))
	for k, p := range ps {
		s[k] = p.arg
	}
	return strings.Join(s, ", ")
}

// noSession reports an iscsiadm failure that means "no such session or
// record": success for logout and record deletion.
func noSession(err error) bool {
	c := exitStatus(err)
	return c == exitNoObjsFound || c == exitSessNotFound
}
