package iscsitarget

// lun is the logical unit number of every volume: one target per volume,
// the volume its LUN 1 (tgt keeps LUN 0 for its controller).
const lun = 1

// export is one target as tgt reports it.
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
