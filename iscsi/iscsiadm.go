package iscsi

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/blockvol/blockvol/hostexec"
)

// The iscsiadm command lines used here (open-iscsi 2.x; -I is accepted by
// node and discoverydb modes alike, and is appended only when Config.Iface
// is set):
//
//	iscsiadm -m discoverydb -t sendtargets -p PORTAL [-I IFACE] -o new
//	iscsiadm -m discoverydb -t sendtargets -p PORTAL [-I IFACE] -o update -n discovery.sendtargets.auth.FIELD -v VALUE
//	iscsiadm -m discoverydb -t sendtargets -p PORTAL [-I IFACE] --discover
//	iscsiadm -m node -T IQN -p PORTAL [-I IFACE] -o new
//	iscsiadm -m node -T IQN -p PORTAL [-I IFACE] -o update -n node.session.timeo.replacement_timeout -v SECONDS
//	iscsiadm -m node -T IQN -p PORTAL [-I IFACE] -o update -n node.conn[0].timeo.login_timeout -v SECONDS
//	iscsiadm -m node -T IQN -p PORTAL [-I IFACE] -o update -n node.session.initial_login_retry_max -v 0
//	iscsiadm -m node -T IQN -p PORTAL [-I IFACE] -o update -n node.session.auth.FIELD -v VALUE
//	iscsiadm -m node -T IQN -p PORTAL [-I IFACE] --login
//	iscsiadm -m node -T IQN -p PORTAL [-I IFACE] --rescan
//	iscsiadm -m node -T IQN -p PORTAL [-I IFACE] --logout
//	iscsiadm -m node -T IQN -p PORTAL [-I IFACE] -o delete
//
// One -n/-v pair per call: older iscsiadm releases take a single pair.
const iscsiadmCmd = "iscsiadm"

// nodeArgs addresses the node record of (iqn, portal, iface).
func (i *Initiator) nodeArgs(iqn string, p portal, rest ...string) []string {
	args := []string{"-m", "node", "-T", iqn, "-p", p.arg}
	if i.cfg.Iface != "" {
		args = append(args, "-I", i.cfg.Iface)
	}
	return append(args, rest...)
}

// discoveryArgs addresses the sendtargets discovery record of portal.
func (i *Initiator) discoveryArgs(p portal, rest ...string) []string {
	args := []string{"-m", "discoverydb", "-t", "sendtargets", "-p", p.arg}
	if i.cfg.Iface != "" {
		args = append(args, "-I", i.cfg.Iface)
	}
	return append(args, rest...)
}

// chapSettings lists the record fields (under prefix, e.g.
// "node.session.auth.") that c sets, in the order they are written.
func chapSettings(prefix string, c *CHAP) [][2]string {
	s := [][2]string{
		{prefix + "authmethod", "CHAP"},
		{prefix + "username", c.Username},
		{prefix + "password", c.Password},
	}
	if c.MutualUsername != "" {
		s = append(s,
			[2]string{prefix + "username_in", c.MutualUsername},
			[2]string{prefix + "password_in", c.MutualPassword})
	}
	return s
}

// nodeSettings lists the node record fields Attach writes before every
// login, in order: the session's recovery time (Config.ReplacementTimeout)
// and the bound of the login itself (Config.PortalLoginTimeout).
func (i *Initiator) nodeSettings() [][2]string {
	return [][2]string{
		{"node.session.timeo.replacement_timeout", wholeSeconds(i.cfg.ReplacementTimeout)},
		{"node.conn[0].timeo.login_timeout", wholeSeconds(i.cfg.PortalLoginTimeout)},
		{"node.session.initial_login_retry_max", "0"},
	}
}

// wholeSeconds formats d as whole seconds, rounded up, at least 1: the
// unit of open-iscsi's timeouts.
func wholeSeconds(d time.Duration) string {
	return strconv.FormatInt(max(1, int64((d+time.Second-1)/time.Second)), 10)
}

// idbmAttempts is how many times a record operation (node or discovery
// record creation, update or deletion, sendtargets discovery) is made when
// iscsiadm fails with its node database error (exit 6), idbmBackoff the
// wait before the second attempt (doubled each time, with jitter).
// Concurrent iscsiadm calls about different targets race in open-iscsi's
// record tree under /etc/iscsi (seen with open-iscsi 2.1.8: of 8 parallel
// `-m node -T IQN -p PORTAL -o delete`, 7 failed within 3 s with "Could not
// execute operation on all records: encountered iSCSI database failure");
// these operations are idempotent, so trying again is safe.
var (
	idbmAttempts = 5
	idbmBackoff  = 50 * time.Millisecond
)

// retriesIDBM reports whether operation o is tried again after a node
// database error.
func retriesIDBM(o op) bool {
	switch o {
	case opDiscovery, opDiscoveryRec, opNodeNew, opNodeUpdate, opNodeDelete:
		return true
	}
	return false
}

// iscsiadm runs one iscsiadm call under its own timeout (a record
// operation again after a node database error, see idbmAttempts). A
// failure is an *Error about (o, iqn, p) whose cause carries a redacted
// argv; secrets are removed from iscsiadm's stderr too.
func (i *Initiator) iscsiadm(ctx context.Context, timeout time.Duration, o op, iqn string, p portal, secrets []string, args []string) error {
	wait := idbmBackoff
	for attempt := 1; ; attempt++ {
		err := i.iscsiadmOnce(ctx, timeout, o, iqn, p, secrets, args)
		if err == nil || exitStatus(err) != exitIDBM || !retriesIDBM(o) || attempt >= idbmAttempts {
			return err
		}
		d := wait + rand.N(wait)
		i.log.Debug("iscsiadm failed on the node database; trying again", "op", string(o), "iqn", iqn, "portal", p.arg,
			"attempt", attempt, "wait", d.String(), "error", err.Error())
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait *= 2
	}
}

// iscsiadmOnce is one attempt of iscsiadm.
func (i *Initiator) iscsiadmOnce(ctx context.Context, timeout time.Duration, o op, iqn string, p portal, secrets []string, args []string) error {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	i.log.Debug("running iscsiadm", "args", strings.Join(redactArgv(args), " "))
	_, err := i.run.Run(cctx, iscsiadmCmd, args...)
	if err == nil {
		return nil
	}
	e := &Error{Op: string(o), IQN: iqn, Portal: p.arg}
	var ee *hostexec.ExitError
	switch {
	case errors.As(err, &ee) && ctx.Err() == nil && cctx.Err() == nil:
		stderr := redactText(ee.Stderr, secrets)
		e.Code = ee.Code
		e.Reason, e.kind = classify(o, ee.Code, stderr)
		e.Err = &hostexec.ExitError{Argv: redactArgv(ee.Argv), Code: ee.Code, Stderr: stderr}
	case ctx.Err() != nil:
		e.Reason, e.Err = "the request was cancelled or its deadline passed", ctx.Err()
	case cctx.Err() != nil:
		e.Reason = fmt.Sprintf("iscsiadm did not finish within %s (the target may be unreachable)", timeout)
		e.Err, e.kind = context.DeadlineExceeded, ErrTimeout
	default:
		// Could not start iscsiadm; the error names the program only.
		e.Reason = "could not run iscsiadm (is open-iscsi installed?): " + redactText(err.Error(), secrets)
		e.Err = errors.New(redactText(err.Error(), secrets))
	}
	return e
}

// exitStatus returns the iscsiadm exit status carried by err, or 0.
func exitStatus(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// timedOut reports whether err is iscsiadm killed by a timeout or a
// cancellation (as opposed to iscsiadm reporting a failure).
func timedOut(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == 0 &&
		(errors.Is(e.Err, context.DeadlineExceeded) || errors.Is(e.Err, context.Canceled))
}
