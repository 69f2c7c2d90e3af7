package plugin

import (
	"context"
	"time"

	"github.com/blockvol/blockvol/volumes"
)

// blockvol's own calls, served on the plugin socket beside Docker's
// VolumeDriver calls (Docker's volume API has no verbs for them):
// `blockvol volume snapshot ...` and `blockvol volume resize` use them.
// Answers carry Err, a whole sentence, on failure, as Docker's do.
const (
	SnapshotCreatePath = "/BlockVol.SnapshotCreate"
	SnapshotListPath   = "/BlockVol.SnapshotList"
	SnapshotRemovePath = "/BlockVol.SnapshotRemove"
	ResizePath         = "/BlockVol.Resize"
)

// SnapshotCreateRequest asks for a snapshot called Name of Volume.
type SnapshotCreateRequest struct{ Volume, Name string }

// SnapshotListRequest asks for the snapshots of Volume, all for "".
type SnapshotListRequest struct{ Volume string }

// SnapshotRemoveRequest asks to remove the snapshot Name.
type SnapshotRemoveRequest struct{ Name string }

// ResizeRequest asks to grow volume Name to Size (as the size option
// reads it: "20G", "512M", "10").
type ResizeRequest struct{ Name, Size string }

// Snapshot is one snapshot on the wire.
type Snapshot struct {
	Name      string
	Volume    string
	Backend   string
	SizeBytes int64
	CreatedAt string         `json:",omitempty"` // RFC 3339
	Status    map[string]any `json:",omitempty"`
}

// SnapshotResponse answers SnapshotCreate.
type SnapshotResponse struct {
	Snapshot Snapshot
	Err      string `json:",omitempty"`
}

// SnapshotListResponse answers SnapshotList.
type SnapshotListResponse struct {
	Snapshots []Snapshot
	Err       string `json:",omitempty"`
}

// Extend adds blockvol's own calls to h, the protocol handler of d.
func (d *Driver) Extend(h *Handler) {
	h.route(SnapshotCreatePath, true, func(b []byte) (any, error) {
		return withRequest(b, func(r *SnapshotCreateRequest) (any, error) {
			s, err := d.core.CreateSnapshot(context.Background(), r.Volume, r.Name)
			return SnapshotResponse{Snapshot: wireSnapshot(s)}, err
		})
	})
	h.route(SnapshotListPath, true, func(b []byte) (any, error) {
		return withRequest(b, func(r *SnapshotListRequest) (any, error) {
			snaps, err := d.core.Snapshots(context.Background(), r.Volume)
			out := make([]Snapshot, 0, len(snaps))
			for _, s := range snaps {
				out = append(out, wireSnapshot(s))
			}
			return SnapshotListResponse{Snapshots: out}, err
		})
	})
	h.route(SnapshotRemovePath, true, func(b []byte) (any, error) {
		return withRequest(b, func(r *SnapshotRemoveRequest) (any, error) {
			return struct{}{}, d.core.RemoveSnapshot(context.Background(), r.Name)
		})
	})
	h.route(ResizePath, true, func(b []byte) (any, error) {
		return withRequest(b, func(r *ResizeRequest) (any, error) {
			size, err := volumes.ParseSize(r.Size)
			if err == nil {
				err = d.core.Resize(context.Background(), r.Name, size)
			}
			return struct{}{}, err
		})
	})
}

func wireSnapshot(s volumes.SnapshotInfo) Snapshot {
	out := Snapshot{Name: s.Name, Volume: s.Volume, Backend: s.Backend, SizeBytes: s.SizeBytes, Status: s.Status}
	if !s.CreatedAt.IsZero() {
		out.CreatedAt = s.CreatedAt.UTC().Format(time.RFC3339)
	}
	return out
}
