package backends

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/blockvol/blockvol/iscsi"
)

// Snapshot is a backend's view of one snapshot: a point-in-time copy of a
// volume, kept by the backend until removed. Snapshot names share one
// namespace per backend (a snapshot is found by its name alone), apart
// from the volumes'.
type Snapshot struct {
	Name      string
	Volume    string // the volume it was taken of
	SizeBytes int64  // the volume's size when it was taken
	CreatedAt time.Time
	// Status holds backend facts worth showing (how it was copied, the
	// backend's own ID); keys are lower-case words.
	Status map[string]any
}

// Snapshotter is implemented by backends that can take snapshots. The
// caller makes the volume's filesystem consistent (frozen) for the
// duration of CreateSnapshot and serializes calls on one volume.
type Snapshotter interface {
	// CreateSnapshot copies volume as it is now into a new snapshot. A
	// name taken already yields sentinel.ErrExists, a missing volume
	// sentinel.ErrNotFound.
	CreateSnapshot(ctx context.Context, volume, name string) (Snapshot, error)
	// GetSnapshot returns one snapshot, or sentinel.ErrNotFound.
	GetSnapshot(ctx context.Context, name string) (Snapshot, error)
	// ListSnapshots returns the snapshots of volume, or every snapshot
	// when volume is "".
	ListSnapshots(ctx context.Context, volume string) ([]Snapshot, error)
	// RemoveSnapshot deletes a snapshot; a missing one yields
	// sentinel.ErrNotFound.
	RemoveSnapshot(ctx context.Context, name string) error
}

// Source names what a clone is made from: exactly one of Snapshot and
// Volume is set.
type Source struct {
	Snapshot string
	Volume   string
}

// Cloner is implemented by backends that can create a volume holding a
// copy of one of their snapshots or volumes. req.SizeBytes is at least
// the source's size; a larger clone has the larger device (growing its
// filesystem is the caller's). A source volume is copied as it is: the
// caller makes it consistent (detached here, or frozen).
type Cloner interface {
	CreateFrom(ctx context.Context, req CreateRequest, src Source) (Volume, error)
}

// Expander is implemented by backends that can grow a volume in place.
// Expand makes the volume sizeBytes long (larger than it is: a smaller
// size yields sentinel.ErrInvalid) and, when it is attached to this host,
// makes its device here show the new size. The data stays.
type Expander interface {
	Expand(ctx context.Context, name string, sizeBytes int64) (Volume, error)
}

// HeldExpander is implemented by Expanders that can grow a volume in use
// on this host only while this host holds the volume's writes for an
// instant (iscsitarget: tgt takes a new size only by adding the LUN
// again). ExpandHeld does what Expand does, running the step that no
// write may cross through hold, which holds this host's writes to the
// volume (freezes its mounted filesystem), runs step, and lets them go on
// every path; the volume's device here shows the new size on return.
type HeldExpander interface {
	ExpandHeld(ctx context.Context, name string, sizeBytes int64, hold func(step func() error) error) (Volume, error)
}

// Rescanner is implemented by initiators that can make this host re-read
// the size of a LUN it is logged in to, without a re-login
// (*iscsi.Initiator): what an iSCSI backend's Expand of a volume attached
// here needs before the filesystem can grow.
type Rescanner interface {
	Rescan(ctx context.Context, t iscsi.Target) error
}

var _ Rescanner = (*iscsi.Initiator)(nil)

// SnapshotsOf is what ListSnapshots returns, made from all the backend's
// snapshots (reusing the slice): those taken of volume, every one when
// volume is "", sorted by name; nil when there are none.
func SnapshotsOf(all []Snapshot, volume string) []Snapshot {
	if volume != "" {
		all = slices.DeleteFunc(all, func(s Snapshot) bool { return s.Volume != volume })
	}
	if len(all) == 0 {
		return nil
	}
	slices.SortFunc(all, func(a, b Snapshot) int { return strings.Compare(a.Name, b.Name) })
	return all
}
