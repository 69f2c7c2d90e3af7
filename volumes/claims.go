package volumes

import (
	"context"
	"fmt"
	"strings"
)

// ClaimCheck tells whether a claim recorded before a restart is still held
// on the host (a CSI target path that is still a mount point, say).
type ClaimCheck func(user string) (alive bool, err error)

// CheckClaims registers check for the claims whose user starts with prefix:
// Recover asks it about each such claim of a volume that is still up and
// drops the claims it reports dead. A front door whose users leave traces
// on the host registers one before Recover runs; claims without a checker
// (Docker's mount IDs) are kept while the volume is up.
func (d *Core) CheckClaims(prefix string, check ClaimCheck) {
	d.checksMu.Lock()
	defer d.checksMu.Unlock()
	if d.checks == nil {
		d.checks = map[string]ClaimCheck{}
	}
	d.checks[prefix] = check
}

func (d *Core) checkFor(user string) ClaimCheck {
	d.checksMu.Lock()
	defer d.checksMu.Unlock()
	for p, c := range d.checks {
		if strings.HasPrefix(user, p) {
			return c
		}
	}
	return nil
}

// liveClaims returns the users of r that are still held: every user without
// a checker, and those their checker reports alive.
func (d *Core) liveClaims(r record) ([]string, error) {
	var live []string
	for _, u := range r.Users {
		check := d.checkFor(u)
		if check == nil {
			live = append(live, u)
			continue
		}
		ok, err := check(u)
		if err != nil {
			return nil, fmt.Errorf("claim %s: %w", shortID(u), err)
		}
		if ok {
			live = append(live, u)
		}
	}
	return live, nil
}

// Holds reports whether user has a claim on the volume on this host.
func (d *Core) Holds(name, user string) bool {
	r, ok := d.recs.get(name)
	return ok && r.has(user)
}

// Claims returns the users of the volume on this host whose claims start
// with prefix, sorted.
func (d *Core) Claims(name, prefix string) []string {
	r, _ := d.recs.get(name)
	var out []string
	for _, u := range r.Users {
		if strings.HasPrefix(u, prefix) {
			out = append(out, u)
		}
	}
	return out
}

// annotationPrefix marks the annotations in a backend volume's Meta.
const annotationPrefix = "blockvol.a."

// Annotate changes one annotation stored with the volume (in its backend's
// Meta, beside its options), under the volume's lock, so that it is seen by
// every host that shares the backend: change gets the current value ("" for
// none) and returns the new one ("" removes it). An error from change is
// returned as it is and changes nothing. A missing volume yields an error
// wrapping ErrNotFound.
func (d *Core) Annotate(ctx context.Context, name, key string, change func(old string) (string, error)) (err error) {
	c := d.begin(ctx, "annotate", name, d.cfg.OtherTimeout)
	defer func() { c.end(err) }()
	ctx = c.ctx
	vol, bn, unlock, err := d.lockedLookup(c, name)
	if err != nil {
		return err
	}
	defer unlock()
	k := annotationPrefix + key
	old := vol.Meta[k]
	v, err := change(old)
	if err != nil || v == old {
		return err
	}
	meta := make(map[string]string, len(vol.Meta)+1)
	for mk, mv := range vol.Meta {
		meta[mk] = mv
	}
	if v == "" {
		delete(meta, k)
	} else {
		meta[k] = v
	}
	if err := d.cfg.Backends[bn].SetMeta(ctx, name, meta); err != nil {
		return fmt.Errorf("volume %q: %w", name, err)
	}
	return nil
}

func annotations(meta map[string]string) map[string]string {
	var out map[string]string
	for k, v := range meta {
		if a, ok := strings.CutPrefix(k, annotationPrefix); ok {
			if out == nil {
				out = map[string]string{}
			}
			out[a] = v
		}
	}
	return out
}
