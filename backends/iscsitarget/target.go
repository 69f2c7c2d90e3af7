package iscsitarget

import "context"

// lun is the logical unit number of every volume: one target per volume,
// the volume its LUN 1 (tgt keeps LUN 0 for its controller).
const lun = 1

// software is the iSCSI target software on the target host: tgt today
// (tgt.go), LIO (targetcli) to follow. Every call that changes something is
// made under the backend's host lock, with an export taken from a fresh
// list under the same lock.
type software interface {
	// list returns every target exported now, by IQN.
	list(ctx context.Context) (map[string]*export, error)
	// export creates target iqn with LUN 1 backed by file, allowing no
	// initiator. current is the latest list, to which export adds the new
	// target. A failure leaves no target behind.
	export(ctx context.Context, current map[string]*export, iqn, file string) (*export, error)
	// unexport deletes the target. It fails while sessions exist.
	unexport(ctx context.Context, e *export) error
	// allow adds an initiator name to the target's ACL; present is fine.
	allow(ctx context.Context, e *export, initiator string) error
	// deny removes an ACL entry (an initiator name, or an address tgt
	// lists among them); absent is fine.
	deny(ctx context.Context, e *export, entry string) error
	// disconnect closes every connection of initiator to the target.
	disconnect(ctx context.Context, e *export, initiator string) error
	// bindAccount requires CHAP account user on the target, creating the
	// account with password when the target host lacks it.
	bindAccount(ctx context.Context, e *export, user, password string) error
	// check reports whether the target software answers.
	check(ctx context.Context) error
}

// export is one target as the target software reports it.
type export struct {
	iqn string
	tid int // tgt's target id
	// file backs LUN 1; "" when the target has no LUN 1.
	file string
	// acl lists who may log in: initiator names (and addresses, should
	// someone have added one by hand).
	acl []string
	// accounts are the CHAP accounts bound to the target.
	accounts []string
	// sessions are the logged-in initiators.
	sessions []session
}

// session is one initiator's session (tgt's I_T nexus) with a target.
type session struct {
	id        int
	initiator string
	conns     []int
}

// connected lists the initiators that have a session, without repeats.
func (e *export) connected() []string {
	var out []string
	seen := map[string]bool{}
	for _, s := range e.sessions {
		if !seen[s.initiator] {
			seen[s.initiator] = true
			out = append(out, s.initiator)
		}
	}
	return out
}
