package volumes

import (
	"fmt"
	"sort"
	"sync"

	"github.com/blockvol/blockvol/state"
)

// Phases of a volume on this host, persisted before each step so that a
// restarted plugin knows what a crash interrupted.
const (
	// phaseMounting: the first user is claimed; attach/format/mount may be
	// partly done. Docker got no answer, so recovery tears it down.
	phaseMounting = "mounting"
	// phaseMounted: mounted at Mountpoint for Users.
	phaseMounted = "mounted"
	// phaseUnmounting: the last user left; unmount/detach may be partly
	// done. Recovery and the next Mount finish it.
	phaseUnmounting = "unmounting"
)

// record is what this host knows of a volume it has in use. It exists from
// the first use until the last release has detached the volume, and is
// changed only under the volume's lock.
type record struct {
	Name       string   `json:"name"`
	Backend    string   `json:"backend"`
	Phase      string   `json:"phase"`
	Users      []string `json:"users"` // sorted set of claims (Docker mount IDs, ...)
	Device     string   `json:"device,omitempty"`
	Mountpoint string   `json:"mountpoint"` // "" for Block
	// Block: the volume is in use as a raw block device (attached only).
	Block bool `json:"block,omitempty"`
	// Frozen: the filesystem is (being) frozen for a snapshot; Recover
	// thaws it when a kill interrupted the snapshot.
	Frozen bool `json:"frozen,omitempty"`

	// seq changes at every put (not persisted): a query that asked the
	// backend without the volume's lock trusts the answer only for the
	// record it saw before asking.
	seq uint64
}

// at is where the users find the volume: its mountpoint, or its device.
func (r *record) at() string {
	if r.Block {
		return r.Device
	}
	return r.Mountpoint
}

// check reports a record that cannot be what this code wrote for name.
func (r *record) check(name string) error {
	switch {
	case r.Name != name:
		return fmt.Errorf("record of %q names %q", name, r.Name)
	case r.Phase != phaseMounting && r.Phase != phaseMounted && r.Phase != phaseUnmounting:
		return fmt.Errorf("record of %q has no known phase", name)
	case r.Backend == "" || (r.Mountpoint == "") != r.Block:
		return fmt.Errorf("record of %q lacks its backend or mountpoint", name)
	}
	return nil
}

func (r *record) has(user string) bool {
	i := sort.SearchStrings(r.Users, user)
	return i < len(r.Users) && r.Users[i] == user
}

func (r *record) add(user string) {
	if r.has(user) {
		return
	}
	r.Users = append(r.Users, user)
	sort.Strings(r.Users)
}

func (r *record) remove(user string) {
	i := sort.SearchStrings(r.Users, user)
	if i < len(r.Users) && r.Users[i] == user {
		r.Users = append(r.Users[:i], r.Users[i+1:]...)
	}
}

// records is the in-memory copy of the persisted records. The map is
// guarded by mu for short reads and writes only; a record's content is
// changed only by the holder of its volume lock, through put and del,
// which persist first and publish after.
type records struct {
	store *state.Store
	mu    sync.RWMutex
	m     map[string]record
	seq   uint64 // the last record.seq given out
}

func (rs *records) get(name string) (record, bool) {
	rs.mu.RLock()
	defer rs.mu.RUnlock()
	r, ok := rs.m[name]
	if ok {
		r.Users = append([]string(nil), r.Users...)
	}
	return r, ok
}

// put persists r and then publishes it.
func (rs *records) put(r record) error {
	if err := rs.store.Save(r.Name, r); err != nil {
		return err
	}
	r.Users = append([]string(nil), r.Users...)
	rs.mu.Lock()
	rs.seq++
	r.seq = rs.seq
	rs.m[r.Name] = r
	rs.mu.Unlock()
	return nil
}

// del removes the record of name from disk, then from memory.
func (rs *records) del(name string) error {
	if err := rs.store.Delete(name); err != nil {
		return err
	}
	rs.mu.Lock()
	delete(rs.m, name)
	rs.mu.Unlock()
	return nil
}

// locals returns name → this host's use of every volume with a record.
func (rs *records) locals() map[string]*Local {
	rs.mu.RLock()
	defer rs.mu.RUnlock()
	out := make(map[string]*Local, len(rs.m))
	for n, r := range rs.m {
		out[n] = localOf(r)
	}
	return out
}
