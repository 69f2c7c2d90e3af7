package cinder

import (
	"sync"
	"time"

	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumes"
)

// recentTTL is how long a name lookup answers for later calls on the same
// name. Docker asks Get right before every Create and Remove; answering
// those from the Get's lookup saves a list request each. The window is
// short, and a Create that trusts a "not found" still checks for a
// concurrent creator after its POST.
const recentTTL = time.Second

// recentFinds remembers the last lookup of each name for recentTTL. Every
// change this backend makes to a volume forgets its name.
type recentFinds struct {
	mu  sync.Mutex
	m   map[string]recentFind
	now func() time.Time
}

type recentFind struct {
	v  *volumes.Volume // nil: no such volume
	at time.Time
}

func (r *recentFinds) put(name string, v *volumes.Volume) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[string]recentFind{}
	}
	now := r.clock()
	for n, f := range r.m { // few entries: drop the stale ones as we go
		if now.Sub(f.at) >= recentTTL {
			delete(r.m, n)
		}
	}
	r.m[name] = recentFind{v: v, at: now}
}

// get returns the lookup of name made less than recentTTL ago, if any
// (v nil: the volume did not exist).
func (r *recentFinds) get(name string) (v *volumes.Volume, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f, ok := r.m[name]
	if !ok || r.clock().Sub(f.at) >= recentTTL {
		return nil, false
	}
	if f.v == nil {
		return nil, true
	}
	c := *f.v
	return &c, true
}

func (r *recentFinds) forget(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.m, name)
}

func (r *recentFinds) clock() time.Time {
	if r.now != nil {
		return r.now()
	}
	return time.Now()
}
