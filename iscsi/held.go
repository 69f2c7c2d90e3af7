package iscsi

import "sync"

// heldLUNs remembers the LUNs this process attached and has not detached:
// a LUN attached for a volume whose mount is still under way is neither
// mounted nor held yet, so sysfs and mountinfo cannot tell that it is in
// use, and a Detach of another LUN of the same target must not log the
// target out under it. Only in memory: after a restart no mount is under
// way, and the plugin's recovery tears half-done ones down.
type heldLUNs struct {
	mu   sync.Mutex
	luns map[string]map[int]bool // iqn → LUNs
}

func (h *heldLUNs) add(iqn string, lun int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.luns == nil {
		h.luns = map[string]map[int]bool{}
	}
	if h.luns[iqn] == nil {
		h.luns[iqn] = map[int]bool{}
	}
	h.luns[iqn][lun] = true
}

func (h *heldLUNs) remove(iqn string, lun int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.luns[iqn], lun)
	if len(h.luns[iqn]) == 0 {
		delete(h.luns, iqn)
	}
}

// other returns a LUN of iqn other than lun that is held, or -1.
func (h *heldLUNs) other(iqn string, lun int) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	for l := range h.luns[iqn] {
		if l != lun {
			return l
		}
	}
	return -1
}
