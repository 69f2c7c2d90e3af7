// Package backends defines the contract between the plugin and the systems
// that provide block volumes: the embedded loop backend, a generic Linux
// iSCSI target, OpenStack Cinder.
//
// A backend knows how to create, find and delete volumes, and how to attach
// one to this host (returning a local block device) and detach it again.
// It knows nothing of filesystems, mounts or containers: those belong to the
// plugin. The plugin serializes all calls for one volume name, so a backend
// need not guard against two concurrent calls on the same volume from this
// host; calls on different volumes may run in parallel. Backends shared by
// several hosts must still guard against other hosts themselves.
package backends

import (
	"context"
	"time"

	"github.com/blockvol/blockvol/iscsi"
)

// Backends wrap the sentinels of internal/sentinel (fmt.Errorf("...: %w",
// sentinel.ErrNotFound)) so that the plugin can classify failures with
// errors.Is: ErrNotFound only when the backend is reachable and has no such
// volume (never for an outage: Docker forgets volumes whose Get fails with
// "not found"); ErrExists for a Create of a name it already has; ErrInUse
// for a volume attached here or elsewhere that cannot be removed or
// attached; ErrInvalid for a request it cannot satisfy as given.

// Scope values, as Docker's Capabilities call reports them.
const (
	ScopeLocal  = "local"  // volumes exist on this host only
	ScopeGlobal = "global" // every host sees the same volumes
)

// CreateRequest is what a backend needs to make a volume.
type CreateRequest struct {
	Name      string
	SizeBytes int64
	// VolumeType, IOPS and AvailabilityZone are passed through to backends
	// that know them; others reject a non-empty value they cannot honour.
	VolumeType       string
	IOPS             int
	AvailabilityZone string
	// Meta is stored with the volume and returned by Get and List
	// unchanged. The plugin keeps the volume's parsed options there,
	// because dvdcli sends options only at Create.
	Meta map[string]string
}

// Volume is a backend's view of one volume.
type Volume struct {
	Name      string
	SizeBytes int64
	CreatedAt time.Time
	Meta      map[string]string
	// Status holds backend facts worth showing in `docker volume inspect`
	// (type, attachment, target); keys are lower-case words.
	Status map[string]any
	// Attachment is the backend's record of the host that has the volume
	// attached, for shared backends that keep one; nil when the backend
	// keeps none or could not tell.
	Attachment *Attachment
}

// AttachOptions modify one Attach.
type AttachOptions struct {
	// Preempt takes the volume over from another host that has it
	// attached (a dead host, say), fencing that host off first.
	Preempt bool
}

// Backend provides volumes.
type Backend interface {
	// Scope is ScopeLocal or ScopeGlobal.
	Scope() string
	// Create makes a volume. A name that exists already yields sentinel.ErrExists.
	Create(ctx context.Context, req CreateRequest) (Volume, error)
	// Get returns one volume, or sentinel.ErrNotFound.
	Get(ctx context.Context, name string) (Volume, error)
	// List returns every volume of this backend.
	List(ctx context.Context) ([]Volume, error)
	// SetMeta replaces the Meta stored with a volume.
	SetMeta(ctx context.Context, name string, meta map[string]string) error
	// Remove deletes a volume and its data. A volume still attached yields
	// sentinel.ErrInUse; a missing one yields sentinel.ErrNotFound.
	Remove(ctx context.Context, name string) error
	// Attach makes the volume available on this host and returns the path
	// of its block device. It is idempotent: attaching an attached volume
	// returns its current device, looked up afresh. A volume attached to
	// another host yields sentinel.ErrInUse naming that host, unless opts.Preempt:
	// then the other host is fenced off first.
	Attach(ctx context.Context, name string, opts AttachOptions) (device string, err error)
	// Detach releases the volume from this host. It is idempotent:
	// detaching a volume that is not attached here succeeds.
	Detach(ctx context.Context, name string) error
}

// BlankProver is implemented by backends that can prove, without reading
// it, that a volume's device holds nothing but zeros (the loop backend: an
// image that is all holes). The core then formats a fresh volume without
// probing it first: a probe of zeros finds nothing.
type BlankProver interface {
	// ProvenBlank reports whether dev, the device Attach returned for
	// name, reads as zeros only, counting every write to dev or to the
	// volume's data finished before the call. false means "not proven",
	// never "not blank".
	ProvenBlank(ctx context.Context, name, dev string) (bool, error)
}

// UnchangedProver is implemented by backends that can prove, without
// reading it, that a volume's data is exactly what it was when this
// process last detached it with nothing left holding it (the loop backend:
// the image file's identity, size and times). The core then mounts again a
// filesystem it had cleanly unmounted before that detach without probing
// and checking it again.
type UnchangedProver interface {
	// ProvenUnchanged reports whether dev, the device Attach returned for
	// name, holds what name held at this process's last Detach of it, one
	// that left no device of this host bound to it. Each Detach is proof
	// for one call at most. false means "not proven", never "changed".
	ProvenUnchanged(ctx context.Context, name, dev string) (bool, error)
}

// HostAttachments is implemented by backends that can tell from this host
// alone which of their volumes are attached to it. Recovery detaches those
// the plugin has no record of (a kill in the middle of an Attach), so
// that what the host has, not what the records say, is reconciled.
type HostAttachments interface {
	AttachedHere(ctx context.Context) ([]string, error)
}

// Initiator logs this host in to iSCSI targets, for the backends that hand
// out iSCSI LUNs (cinder, iscsitarget); *iscsi.Initiator is one.
type Initiator interface {
	Attach(ctx context.Context, t iscsi.Target) (string, error)
	Detach(ctx context.Context, t iscsi.Target) error
	InitiatorName() (string, error)
}

var _ Initiator = (*iscsi.Initiator)(nil)

// Reserver is an Initiator that can fence other hosts off a device it
// attached: Reserve registers key and reserves the device for its
// registrants (SCSI-3 persistent reservation, Write Exclusive –
// Registrants Only), Unreserve gives the registration up.
// iscsi.ErrNoReservations: the target has none.
type Reserver interface {
	Reserve(ctx context.Context, dev string, key uint64) error
	Unreserve(ctx context.Context, dev string, key uint64) error
}

var _ Reserver = (*iscsi.Initiator)(nil)
