// Package sentinel is blockvol's one set of sentinel errors. Every layer wraps
// them with %w (fmt.Errorf("...: %w", sentinel.ErrInUse)) and every caller
// classifies with errors.Is, so a class survives from the layer that found
// it (the iSCSI initiator, a backend, the filesystem code) up to the user
// without translation.
//
// Classes that belong to one layer only (iSCSI authentication, a foreign
// signature on a device, a missing record file) stay in that layer.
package sentinel

import "errors"

var (
	// ErrNotFound: the system asked is reachable and has no such volume.
	// Never wrap it for an outage: Docker forgets volumes whose Get fails
	// with "not found".
	ErrNotFound = errors.New("not found")
	// ErrExists: a Create of a name that already exists.
	ErrExists = errors.New("already exists")
	// ErrInUse: the volume, LUN or device is attached, mounted or held
	// (here or elsewhere) and cannot be removed, detached or attached.
	ErrInUse = errors.New("in use")
	// ErrInvalid: a request or configuration that cannot work as given (a
	// size or option a backend does not support, a malformed name).
	ErrInvalid = errors.New("invalid request")
	// ErrBusy: another operation holds the volume or filesystem now; the
	// same request may succeed later.
	ErrBusy = errors.New("busy")
)
