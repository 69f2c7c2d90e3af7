package cinder

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/blockvol/blockvol/iscsi"
	"github.com/blockvol/blockvol/state"
)

var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// hostUUID returns this host's UUID: read from path, or generated (random,
// version 4) and stored there, atomically, the first time.
func hostUUID(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		id := strings.TrimSpace(string(data))
		if !uuidRE.MatchString(id) {
			return "", fmt.Errorf("host UUID file %s holds %q, not a UUID (delete it to have a new one generated)", path, id)
		}
		return strings.ToLower(id), nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("read host UUID: %w", err)
	}
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	id := fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", fmt.Errorf("store host UUID: %w", err)
	}
	if err := state.WriteFileAtomic(path, []byte(id+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("store host UUID: %w", err)
	}
	return id, nil
}

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
