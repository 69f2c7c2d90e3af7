package iscsitarget

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/blockvol/blockvol/hostexec"
)

// tgt drives the Linux SCSI target framework (tgtd) with tgtadm(8).
//
// tgtd keeps its targets in memory only: after a restart of tgtd (or of
// the target host) they are gone, and the backend exports them again from
// its records. tgtadm names targets by a numeric id (tid), which the
// backend never stores: every change is preceded, under the host lock, by
// a fresh `--op show` that maps IQNs to tids.
//
// tgtadm exits 22 for every refusal; what went wrong is only in its
// message, which tgtErr matches (the messages are fixed strings in tgtadm,
// not translated).
//
// Every call that changes something is made under the backend's host lock,
// with an export taken from a fresh list under the same lock.
type tgt struct {
	host Host
	port int // tgtd's control port (tgtadm -C)
}

// tgtadm's messages, as it prints them after "tgtadm: ".
const (
	tgtNoTarget      = "can't find the target"
	tgtTargetExists  = "this target already exists"
	tgtTargetActive  = "this target is still active"
	tgtACLExists     = "this access control rule already exists"
	tgtNoACL         = "this access control rule does not exist"
	tgtNoAccount     = "can't find the account"
	tgtAccountExists = "this account already exists"
	tgtNoSession     = "can't find the session"
	tgtNoConnection  = "can't find the connection"
)

// errTgtdDown marks a tgtadm that could not talk to tgtd.
var errTgtdDown = errors.New("tgtd not answering")

func (t *tgt) run(ctx context.Context, args ...string) ([]byte, error) {
	argv := append([]string{"-C", strconv.Itoa(t.port), "--lld", "iscsi"}, args...)
	out, err := t.host.Run(ctx, "tgtadm", argv...)
	if err != nil && isTgtdDown(err) {
		return out, fmt.Errorf("tgtd is not answering on control port %d of the target host (is it running?): %w: %w", t.port, errTgtdDown, err)
	}
	return out, err
}

// isTgtdDown reports a tgtadm that could not reach tgtd's control socket.
func isTgtdDown(err error) bool {
	msg := tgtErr(err)
	return strings.Contains(msg, "can't connect to tgt daemon") ||
		strings.Contains(msg, "to tgt daemon") || strings.Contains(msg, "can't get the response")
}

// tgtErr returns tgtadm's message, or "" when err is not a tgtadm refusal.
func tgtErr(err error) string {
	var ee *hostexec.ExitError
	if !errors.As(err, &ee) {
		return ""
	}
	msg := strings.TrimSpace(ee.Stderr)
	if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
		msg = msg[i+1:]
	}
	return strings.TrimPrefix(msg, "tgtadm: ")
}

// list returns every target exported now, by IQN.
func (t *tgt) list(ctx context.Context) (map[string]*export, error) {
	out, err := t.run(ctx, "--mode", "target", "--op", "show")
	if err != nil {
		return nil, fmt.Errorf("list iSCSI targets: %w", err)
	}
	return parseTgtShow(string(out))
}

// parseTgtShow parses `tgtadm --mode target --op show`:
//
//	Target 1: iqn.2024-01.org.example:vol1
//	    System information:
//	        Driver: iscsi
//	        State: ready
//	    I_T nexus information:
//	        I_T nexus: 2
//	            Initiator: iqn.1993-08.org.debian:01:abc alias: node1
//	            Connection: 0
//	                IP Address: 192.0.2.7
//	    LUN information:
//	        LUN: 0
//	            Type: controller
//	            ...
//	        LUN: 1
//	            Type: disk
//	            ...
//	            Backing store path: /srv/blockvol/vol1.img
//	            Backing store flags:
//	    Account information:
//	        blockvol
//	    ACL information:
//	        iqn.1993-08.org.debian:01:abc
func parseTgtShow(out string) (map[string]*export, error) {
	exports := map[string]*export{}
	p := tgtShowParser{lun: -1}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 16<<20)
	for sc.Scan() {
		if raw := sc.Text(); !p.line(raw, exports) {
			return nil, fmt.Errorf("unexpected tgtadm output line %q", raw)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read tgtadm output: %w", err)
	}
	return exports, nil
}

// tgtShowParser is where parseTgtShow is in the output: the target (cur),
// its section, and the session and LUN the section's lines are about.
type tgtShowParser struct {
	cur     *export
	sess    *session
	section string
	lun     int
}

// line reads one line of the output, raw, into exports and the target it
// belongs to; false when it is not a line parseTgtShow understands.
func (p *tgtShowParser) line(raw string, exports map[string]*export) bool {
	line := strings.TrimSpace(raw)
	if line == "" {
		return true
	}
	if rest, ok := strings.CutPrefix(raw, "Target "); ok {
		id, iqn, ok := strings.Cut(rest, ": ")
		tid, err := strconv.Atoi(id)
		if !ok || err != nil || iqn == "" {
			return false
		}
		*p = tgtShowParser{cur: &export{iqn: iqn, tid: tid}, lun: -1}
		exports[iqn] = p.cur
		return true
	}
	if p.cur == nil {
		return false
	}
	switch line {
	case "System information:", "I_T nexus information:", "LUN information:", "Account information:", "ACL information:":
		p.section = line
		return true
	}
	key, value, _ := strings.Cut(line, ": ")
	switch p.section {
	case "I_T nexus information:":
		return p.nexus(key, value)
	case "LUN information:":
		switch key {
		case "LUN":
			n, err := strconv.Atoi(value)
			if err != nil {
				return false
			}
			p.lun = n
		case "Backing store path":
			if p.lun == lun && value != "None" {
				p.cur.file = value
			}
		}
	case "Account information:":
		if !strings.HasSuffix(line, " (outgoing)") {
			p.cur.accounts = append(p.cur.accounts, line)
		}
	case "ACL information:":
		p.cur.acl = append(p.cur.acl, line)
	}
	return true
}

// nexus reads one key: value line of the current target's I_T nexus
// section; false when it is not one parseTgtShow understands.
func (p *tgtShowParser) nexus(key, value string) bool {
	switch key {
	case "I_T nexus":
		id, err := strconv.Atoi(value)
		if err != nil {
			return false
		}
		p.cur.sessions = append(p.cur.sessions, session{id: id})
		p.sess = &p.cur.sessions[len(p.cur.sessions)-1]
	case "Initiator":
		if p.sess != nil {
			// "iqn... alias: node1", or the name alone.
			p.sess.initiator, _, _ = strings.Cut(value, " ")
		}
	case "Connection":
		cid, err := strconv.Atoi(value)
		if err != nil || p.sess == nil {
			return false
		}
		p.sess.conns = append(p.sess.conns, cid)
	}
	return true
}

// export creates target iqn with LUN 1 backed by file, allowing no
// initiator. current is the latest list, to which export adds the new
// target. A failure leaves no target behind.
// maxExportAttempts bounds the retries of an export whose target id was
// taken by another export between listing and creating.
const maxExportAttempts = 10

func (t *tgt) export(ctx context.Context, current map[string]*export, iqn, file string) (*export, error) {
	for attempt := 0; ; attempt++ {
		tid := 1
		for _, e := range current {
			tid = max(tid, e.tid+1)
		}
		_, err := t.run(ctx, "--mode", "target", "--op", "new", "--tid", strconv.Itoa(tid), "--targetname", iqn)
		if tgtErr(err) == tgtTargetExists && attempt < maxExportAttempts {
			// Another volume's export (each volume has its own lock),
			// someone else, or a restarted tgtd took the tid
			// meanwhile: look again.
			if current, err = t.list(ctx); err != nil {
				return nil, err
			}
			if _, ok := current[iqn]; ok {
				return nil, fmt.Errorf("iSCSI target %s appeared on the target host while being created", iqn)
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("create iSCSI target %s (tid %d): %w", iqn, tid, err)
		}
		e := &export{iqn: iqn, tid: tid}
		if err := t.addLUN(ctx, e, file); err != nil {
			if uerr := t.unexport(context.WithoutCancel(ctx), e); uerr != nil {
				err = errors.Join(err, fmt.Errorf("undo: %w", uerr))
			}
			return nil, err
		}
		e.file = file
		current[iqn] = e
		return e, nil
	}
}

// addLUN adds LUN 1 backed by file to e's target and gives it the
// volume's own identity (lunParams).
func (t *tgt) addLUN(ctx context.Context, e *export, file string) error {
	tid, l := strconv.Itoa(e.tid), strconv.Itoa(lun)
	if _, err := t.run(ctx, "--mode", "logicalunit", "--op", "new", "--tid", tid, "--lun", l, "--backing-store", file); err != nil {
		return fmt.Errorf("add LUN %d backed by %s to iSCSI target %s: %w", lun, file, e.iqn, err)
	}
	if _, err := t.run(ctx, "--mode", "logicalunit", "--op", "update", "--tid", tid, "--lun", l, "--params", lunParams(e.iqn)); err != nil {
		return fmt.Errorf("set the identity of LUN %d of iSCSI target %s: %w", lun, e.iqn, err)
	}
	return nil
}

// lunParams sets the identity LUN 1 of target iqn shows an initiator:
// tgt's scsi_id (the T10 vendor ID of VPD page 0x83, and, read as hex
// digits, its NAA IEEE Registered Extended designator, the one Linux and
// multipath prefer) and scsi_sn (page 0x80), both lunIdentity(iqn). It is
// the same at every export of the volume and differs between volumes.
// tgt's default encodes only the target id and LUN: volumes of two target
// hosts, or of two tgtd on one (Cinder's own), or one exported again
// under another tid after a tgtd restart, would share an identity, and
// dm-multipath, which groups paths by it, would take one volume's disk
// for a path of another's map.
func lunParams(iqn string) string {
	id := lunIdentity(iqn)
	return "scsi_id=" + id + ",scsi_sn=" + id
}

// lunIdentity is 24 hex digits (tgt's SCSI_ID_LEN) of the IQN's SHA-256.
func lunIdentity(iqn string) string {
	sum := sha256.Sum256([]byte(iqn))
	return hex.EncodeToString(sum[:12])
}

// unexport deletes the target. It fails while sessions exist.
func (t *tgt) unexport(ctx context.Context, e *export) error {
	_, err := t.run(ctx, "--mode", "target", "--op", "delete", "--tid", strconv.Itoa(e.tid))
	switch tgtErr(err) {
	case tgtNoTarget:
		return nil
	case tgtTargetActive:
		return fmt.Errorf("delete iSCSI target %s: initiators are still logged in", e.iqn)
	}
	if err != nil {
		return fmt.Errorf("delete iSCSI target %s: %w", e.iqn, err)
	}
	return nil
}

// allow adds an initiator name to the target's ACL; present is fine.
func (t *tgt) allow(ctx context.Context, e *export, initiator string) error {
	_, err := t.run(ctx, "--mode", "target", "--op", "bind", "--tid", strconv.Itoa(e.tid), "--initiator-name", initiator)
	if err != nil && tgtErr(err) != tgtACLExists {
		return fmt.Errorf("allow initiator %s on iSCSI target %s: %w", initiator, e.iqn, err)
	}
	if !slices.Contains(e.acl, initiator) {
		e.acl = append(e.acl, initiator)
	}
	return nil
}

// deny removes an ACL entry (an initiator name, or an address tgt
// lists among them); absent is fine.
func (t *tgt) deny(ctx context.Context, e *export, entry string) error {
	kind := "--initiator-name"
	if isAddressACL(entry) {
		kind = "--initiator-address"
	}
	_, err := t.run(ctx, "--mode", "target", "--op", "unbind", "--tid", strconv.Itoa(e.tid), kind, entry)
	if err != nil && tgtErr(err) != tgtNoACL && tgtErr(err) != tgtNoTarget {
		return fmt.Errorf("remove %s from the ACL of iSCSI target %s: %w", entry, e.iqn, err)
	}
	acl := e.acl[:0]
	for _, a := range e.acl {
		if a != entry {
			acl = append(acl, a)
		}
	}
	e.acl = acl
	return nil
}

// isAddressACL tells the address entries of tgt's ACL list ("ALL", an IP
// address or network) from initiator names, which it lists alongside.
func isAddressACL(entry string) bool {
	if entry == "ALL" || net.ParseIP(entry) != nil {
		return true
	}
	_, _, err := net.ParseCIDR(entry)
	return err == nil
}

// disconnect closes every connection of initiator to the target.
func (t *tgt) disconnect(ctx context.Context, e *export, initiator string) error {
	var errs []error
	kept := e.sessions[:0]
	for _, s := range e.sessions {
		if s.initiator != initiator {
			kept = append(kept, s)
			continue
		}
		for _, cid := range s.conns {
			_, err := t.run(ctx, "--mode", "conn", "--op", "delete", "--tid", strconv.Itoa(e.tid), "--sid", strconv.Itoa(s.id), "--cid", strconv.Itoa(cid))
			if err != nil && tgtErr(err) != tgtNoSession && tgtErr(err) != tgtNoConnection {
				errs = append(errs, fmt.Errorf("close connection %d of session %d of initiator %s on iSCSI target %s: %w", cid, s.id, initiator, e.iqn, err))
			}
		}
	}
	e.sessions = kept
	return errors.Join(errs...)
}

// bindAccount requires CHAP account user on the target, creating the
// account with password when the target host lacks it.
func (t *tgt) bindAccount(ctx context.Context, e *export, user, password string) error {
	bind := func() error {
		_, err := t.run(ctx, "--mode", "account", "--op", "bind", "--tid", strconv.Itoa(e.tid), "--user", user)
		if tgtErr(err) == tgtAccountExists { // tgt's answer when it is bound already
			return nil
		}
		return err
	}
	err := bind()
	if tgtErr(err) == tgtNoAccount {
		_, err = t.run(ctx, "--mode", "account", "--op", "new", "--user", user, "--password", password)
		if err != nil && tgtErr(err) != tgtAccountExists {
			// The error's argv holds the password: keep only the text
			// (which never has the argv), and drop the chain.
			msg := strings.ReplaceAll(err.Error(), password, "<redacted>")
			if errors.Is(err, errTgtdDown) {
				return fmt.Errorf("create CHAP account %s on the target host: %s: %w", user, msg, errTgtdDown)
			}
			return fmt.Errorf("create CHAP account %s on the target host: %s", user, msg)
		}
		err = bind()
	}
	if err != nil {
		return fmt.Errorf("require CHAP account %s on iSCSI target %s: %w", user, e.iqn, err)
	}
	if !slices.Contains(e.accounts, user) {
		e.accounts = append(e.accounts, user)
	}
	return nil
}

// check reports whether the target software answers.
func (t *tgt) check(ctx context.Context) error {
	out, err := t.run(ctx, "--mode", "sys", "--op", "show")
	if err != nil {
		return err
	}
	// "LLDs:" is followed by "    iscsi: ready" when tgtd serves iSCSI.
	for _, line := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(line) == "iscsi: ready" {
			return nil
		}
	}
	return fmt.Errorf("tgtd on control port %d of the target host answers, but its iSCSI driver is not ready (`tgtadm -C %d --mode sys --op show`)", t.port, t.port)
}
