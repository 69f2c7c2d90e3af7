package backends

import "context"

// Attachment is what a shared backend records of the host that has a
// volume attached: the claim that fencing moves from host to host.
type Attachment struct {
	// Here: the claim names this host.
	Here bool
	// Holder names the host the claim names when it is not this one, as
	// the backend phrases it for a user ("agent-b (initiator iqn...)");
	// "" when no host has the volume.
	Holder string
}

// Lost reports whether a volume this host uses was taken from it: the
// backend records a claim (a is not nil) and it does not name this host.
// Only meaningful for a volume this host had attached and in use.
func (a *Attachment) Lost() bool { return a != nil && !a.Here }

// Reconciler is implemented by shared backends whose shared side can lose
// what an attachment needs while the volume is in use (tgtd forgets its
// targets when it restarts). The plugin calls it on a ticker while this
// host has such volumes mounted, so that their I/O resumes within seconds
// instead of at the volume's next Attach.
type Reconciler interface {
	// Reconcile checks the named volumes, which this host has attached and
	// in use, and re-creates from the backend's own records what their
	// attachment here needs and lacks (for iscsitarget: the target, its
	// LUN, this host on its ACL). It never claims a volume: one whose
	// claim names another host, or none, is left as it is and reported in
	// Lost — fencing comes first. A failure for one volume does not stop
	// the others; err is for a failure that stopped them all.
	Reconcile(ctx context.Context, names []string) (Reconciled, error)
}

// Reconciled is what one Reconcile found and did.
type Reconciled struct {
	// Repaired names the volumes something was re-created for, with what.
	Repaired map[string]string
	// Lost maps the volumes whose claim no longer names this host to the
	// host it names ("" for none).
	Lost map[string]string
	// Failed maps the volumes that could not be checked or repaired to why.
	Failed map[string]error
}
