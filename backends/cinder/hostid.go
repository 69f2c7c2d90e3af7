package cinder

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/blockvol/blockvol/iscsi"
	"github.com/blockvol/blockvol/state"
)

var uuidRE = state.UUIDPattern

// hostUUID returns this host's UUID (state.HostUUID).
func hostUUID(path string) (string, error) { return state.HostUUID(path) }

// record is what this host remembers of a volume it attached: enough to
// log out of the target even after Cinder has forgotten the attachment (a
// takeover by another host). It holds no secret.
type record struct {
	Name         string   `json:"name"`
	VolumeID     string   `json:"volume_id"`
	API          string   `json:"api"` // attachAttachments or attachLegacy
	AttachmentID string   `json:"attachment_id,omitempty"`
	IQN          string   `json:"iqn"`
	Portals      []string `json:"portals"`
	LUN          int      `json:"lun"`
	// Fenced: attached by a takeover, reserved for this host (fence.go).
	Fenced bool `json:"fenced,omitempty"`
}

func (r *record) target() iscsi.Target {
	return iscsi.Target{IQN: r.IQN, Portals: r.Portals, LUN: r.LUN}
}

func (b *Backend) recordPath(volumeID string) string {
	return filepath.Join(b.cfg.StateDir, filepath.Base(volumeID)+".json")
}

// readRecord returns the record of a volume, or nil when there is none.
func (b *Backend) readRecord(volumeID string) (*record, error) {
	data, err := os.ReadFile(b.recordPath(volumeID))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("attachment record %s is unreadable: %w", b.recordPath(volumeID), err)
	}
	return &r, nil
}

func (b *Backend) writeRecord(r *record) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return state.WriteFileAtomic(b.recordPath(r.VolumeID), append(data, '\n'), 0o600)
}

func (b *Backend) removeRecord(volumeID string) error {
	return state.RemoveFile(b.recordPath(volumeID))
}

// recordsNamed returns the records of volume name (normally none or one).
func (b *Backend) recordsNamed(name string) ([]*record, error) {
	paths, err := filepath.Glob(filepath.Join(b.cfg.StateDir, "*.json"))
	if err != nil {
		return nil, err
	}
	var out []*record
	for _, p := range paths {
		r, err := b.readRecord(strings.TrimSuffix(filepath.Base(p), ".json"))
		if err != nil {
			return nil, err
		}
		if r != nil && r.Name == name {
			out = append(out, r)
		}
	}
	return out, nil
}
