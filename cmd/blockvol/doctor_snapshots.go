package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/blockvol/blockvol/backends/loop"
	"github.com/blockvol/blockvol/config"
	"github.com/blockvol/blockvol/state"
)

// checkSnapshotRecords lists the damaged snapshot records the loop
// backends set aside (their snapshots are kept, listed with the damage);
// ok is false when no loop backend is configured. It only reads.
func (d *doctor) checkSnapshotRecords() (r checkResult, ok bool) {
	r = checkResult{Check: "snapshot records"}
	var dirs, damaged []string
	for _, n := range d.Config.BackendNames() {
		s, isLoop := d.Config.Backends[n].Settings.(*config.LoopConfig)
		if !isLoop || s == nil || s.DataDir == "" {
			continue
		}
		dir := loop.SnapshotDir(s.DataDir)
		dirs = append(dirs, dir)
		entries, err := os.ReadDir(d.host(dir))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			r.Status, r.Detail = statusFail, err.Error()
			return r, true
		}
		for _, e := range entries {
			if state.IsQuarantined(e.Name()) {
				damaged = append(damaged, filepath.Join(dir, e.Name()))
			}
		}
	}
	switch {
	case len(dirs) == 0:
		return r, false
	case len(damaged) == 0:
		r.Status, r.Detail = statusOK, "no damaged snapshot record in "+strings.Join(dirs, ", ")
		return r, true
	}
	r.Status = statusWarn
	r.Detail = fmt.Sprintf("%d damaged snapshot record(s) set aside, their snapshots kept and listed with the damage: %s", len(damaged), strings.Join(damaged, ", "))
	r.Fix = "check each snapshot named (blockvol volume snapshot ls; blockvol's log says what was lost), remove it if unwanted, then delete the file"
	return r, true
}
