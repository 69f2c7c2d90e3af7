package iscsi

import (
	"errors"
	"fmt"
	"strings"

	"github.com/blockvol/blockvol/internal/sentinel"
)

// Sentinel errors of the iSCSI initiator. Errors returned by this package
// wrap one of them, or one of internal/sentinel (ErrInvalid: a Target or Config
// that cannot work as given; ErrInUse: Detach of a LUN whose own device is
// still mounted or held), when the failure falls in its class; test with
// errors.Is. ErrNoTarget is not sentinel.ErrNotFound: a target that does not
// answer is no proof that the volume is gone.
var (
	// ErrAuth: the target rejected the initiator's credentials or name.
	ErrAuth = errors.New("iSCSI authentication failed")
	// ErrTimeout: iscsiadm, the target or the network did not answer in time.
	ErrTimeout = errors.New("iSCSI operation timed out")
	// ErrUnreachable: no connection to the portal.
	ErrUnreachable = errors.New("iSCSI portal unreachable")
	// ErrNoTarget: no node record, or no target at the portal.
	ErrNoTarget = errors.New("iSCSI target or record not found")
	// ErrDaemon: iscsid is not running or not reachable.
	ErrDaemon = errors.New("iscsid not reachable")
	// ErrDeviceNotFound: logged in, but the LUN's block device did not
	// appear in time.
	ErrDeviceNotFound = errors.New("iSCSI LUN block device not found")
)

// iscsiadm exit statuses (man iscsiadm, EXIT STATUS); only those this
// package tells apart are named.
const (
	exitSessNotFound     = 2  // ISCSI_ERR_SESS_NOT_FOUND
	exitNoMem            = 3  // ISCSI_ERR_NOMEM (also an unreadable iface file)
	exitTransport        = 4  // ISCSI_ERR_TRANS
	exitLogin            = 5  // ISCSI_ERR_LOGIN
	exitIDBM             = 6  // ISCSI_ERR_IDBM
	exitInvalid          = 7  // ISCSI_ERR_INVAL
	exitTransTimeout     = 8  // ISCSI_ERR_TRANS_TIMEOUT
	exitInternal         = 9  // ISCSI_ERR_INTERNAL
	exitLogout           = 10 // ISCSI_ERR_LOGOUT
	exitPDUTimeout       = 11 // ISCSI_ERR_PDU_TIMEOUT
	exitTransNotFound    = 12 // ISCSI_ERR_TRANS_NOT_FOUND
	exitAccess           = 13 // ISCSI_ERR_ACCESS
	exitTransCaps        = 14 // ISCSI_ERR_TRANS_CAPS
	exitSessExists       = 15 // ISCSI_ERR_SESS_EXISTS
	exitIscsidComm       = 18 // ISCSI_ERR_ISCSID_COMM_ERR
	exitFatalLogin       = 19 // ISCSI_ERR_FATAL_LOGIN
	exitIscsidNotConn    = 20 // ISCSI_ERR_ISCSID_NOTCONN
	exitNoObjsFound      = 21 // ISCSI_ERR_NO_OBJS_FOUND
	exitSysfsLookup      = 22 // ISCSI_ERR_SYSFS_LOOKUP
	exitHostNotFound     = 23 // ISCSI_ERR_HOST_NOT_FOUND
	exitLoginAuthFailed  = 24 // ISCSI_ERR_LOGIN_AUTH_FAILED
	exitOpNotSupp        = 27 // ISCSI_ERR_OP_NOT_SUPP
	exitBusy             = 28 // ISCSI_ERR_BUSY
	exitAgain            = 29 // ISCSI_ERR_AGAIN
	exitSessNotConnected = 32 // ISCSI_ERR_SESSION_NOT_CONNECTED
)

// op is what an iscsiadm call attempted; it phrases the error message.
type op string

const (
	opDiscovery    op = "sendtargets discovery of"
	opDiscoveryRec op = "discovery record setup for"
	opNodeNew      op = "node record creation for"
	opNodeUpdate   op = "node record update for"
	opLogin        op = "login to"
	opRescan       op = "session rescan of"
	opLogout       op = "logout from"
	opNodeDelete   op = "node record deletion for"
)

// Error is a failed iSCSI operation on one target portal. Its message is one
// sentence naming the target and the portal, with a hint at the cause; it
// never contains a CHAP secret.
type Error struct {
	Op     string // what was attempted, e.g. "login to"
	IQN    string
	Portal string
	// Code is iscsiadm's exit status, 0 when iscsiadm did not run to
	// completion (timeout, cancellation, not installed).
	Code   int
	Reason string
	// Err is the cause: a *hostexec.ExitError with a redacted argv, or a
	// context error.
	Err  error
	kind error
}

func (e *Error) Error() string {
	return fmt.Sprintf("iSCSI %s %s at %s failed: %s", e.Op, e.IQN, e.Portal, e.Reason)
}

// Unwrap returns the cause and the sentinel class of the error.
func (e *Error) Unwrap() []error {
	var errs []error
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	if e.kind != nil {
		errs = append(errs, e.kind)
	}
	return errs
}

// classify turns an iscsiadm exit status into a reason and a sentinel.
// stderr (already redacted) is quoted only when the status says little.
func classify(o op, code int, stderr string) (string, error) {
	switch code {
	case exitSessExists:
		if o == opNodeDelete || o == opNodeUpdate {
			return "a session still uses the record", sentinel.ErrInUse
		}
		return "a session already exists", nil
	case exitNoObjsFound:
		switch o {
		case opLogin, opRescan, opNodeUpdate:
			return "no node record or session for this target and portal (check the IQN and the portal; with discovery, the target did not report this portal)", ErrNoTarget
		case opDiscovery:
			return "the portal reported no targets for this initiator (check the portal, the target's ACL and discovery CHAP)", ErrNoTarget
		}
		return "nothing found to operate on", ErrNoTarget
	}
	if r, ok := reasons[code]; ok {
		if r.stderr {
			return r.text + detail(stderr), r.kind
		}
		return r.text, r.kind
	}
	return fmt.Sprintf("iscsiadm exited with status %d", code) + detail(stderr), nil
}

// reason is what classify says of an exit status whatever the operation:
// the reason, whether the last line of stderr follows it (the status says
// little), and the sentinel class (nil: none).
type reason struct {
	text   string
	stderr bool
	kind   error
}

// reasons are the exit statuses classify tells apart, but for those whose
// reason depends on the operation (exitSessExists, exitNoObjsFound).
var reasons = map[int]reason{
	exitSessNotFound:     {"no such session", false, ErrNoTarget},
	exitNoMem:            {"iscsiadm could not allocate a resource or read the iface configuration (check the iface name)", true, nil},
	exitTransport:        {"could not connect to the portal (check the address, the port and firewalls)", false, ErrUnreachable},
	exitLogin:            {"the target refused the login (check the IQN and that the target allows this initiator name)", false, nil},
	exitIDBM:             {"could not read or write the open-iscsi node database (/etc/iscsi)", true, nil},
	exitInvalid:          {"iscsiadm rejected an argument (check the IQN, the portal and the iface)", true, sentinel.ErrInvalid},
	exitTransTimeout:     {"timed out connecting to the portal (check the network and firewalls)", false, ErrTimeout},
	exitInternal:         {"internal iscsid or kernel failure", true, nil},
	exitLogout:           {"the target did not complete the logout", false, nil},
	exitPDUTimeout:       {"the target did not answer in time", false, ErrTimeout},
	exitTransNotFound:    {"the iSCSI transport is not available (load the iscsi_tcp kernel module)", false, nil},
	exitAccess:           {"permission denied (iscsiadm must run as root)", false, nil},
	exitTransCaps:        {"the iSCSI transport does not support this operation", false, nil},
	exitIscsidComm:       {"cannot talk to iscsid (is the iscsid service running?)", false, ErrDaemon},
	exitIscsidNotConn:    {"cannot talk to iscsid (is the iscsid service running?)", false, ErrDaemon},
	exitFatalLogin:       {"the target rejected the login (check CHAP credentials, the IQN and the target's ACL for this initiator name)", false, ErrAuth},
	exitLoginAuthFailed:  {"authorization failure (check CHAP credentials)", false, ErrAuth},
	exitSysfsLookup:      {"could not find the session in sysfs", false, nil},
	exitHostNotFound:     {"could not find the iSCSI host (check the iface)", false, nil},
	exitOpNotSupp:        {"operation not supported", false, nil},
	exitBusy:             {"device or resource busy", false, nil},
	exitAgain:            {"temporary failure, retry later", false, nil},
	exitSessNotConnected: {"the session is not connected", false, nil},
}

// detail formats the last line of iscsiadm's stderr as a parenthesis.
func detail(stderr string) string {
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	last := strings.TrimSpace(lines[len(lines)-1])
	if last == "" {
		return ""
	}
	return " (" + last + ")"
}

const redacted = "<redacted>"

// redactArgv returns a copy of argv in which the value given with -v for a
// secret field (named by the preceding -n) is replaced.
func redactArgv(argv []string) []string {
	out := append([]string(nil), argv...)
	secret := false
	for i := 0; i < len(out); i++ {
		switch out[i] {
		case "-n", "--name":
			if i+1 < len(out) {
				// node.session.auth.password, password_in, and the
				// discovery.sendtargets.auth.* counterparts.
				secret = strings.Contains(out[i+1], "password")
			}
		case "-v", "--value":
			if secret && i+1 < len(out) {
				out[i+1] = redacted
				i++
			}
		}
	}
	return out
}

// redactText removes every secret from s.
func redactText(s string, secrets []string) string {
	for _, sec := range secrets {
		if sec != "" {
			s = strings.ReplaceAll(s, sec, redacted)
		}
	}
	return s
}

// secretsOf lists the passwords of the given CHAP settings.
func secretsOf(chaps ...*CHAP) []string {
	var s []string
	for _, c := range chaps {
		if c != nil {
			s = append(s, c.Password, c.MutualPassword)
		}
	}
	return s
}
