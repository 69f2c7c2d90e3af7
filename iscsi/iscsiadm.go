package iscsi

import (
	"context"
	"errors"
	"fmt"
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

// iscsiadm runs one iscsiadm call under its own timeout. A failure is an
// *Error about (o, iqn, p) whose cause carries a redacted argv; secrets are
// removed from iscsiadm's stderr too.
func (i *Initiator) iscsiadm(ctx context.Context, timeout time.Duration, o op, iqn string, p portal, secrets []string, args []string) error {
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
