package backends

import (
	"fmt"

	"github.com/blockvol/blockvol/internal/quote"

	"github.com/blockvol/blockvol/internal/sentinel"
)

// CheckName is a backend's own defence of its directories: the plugin
// validates names first, but a name must never reach a path outside the
// backend's directory, nor break a one-line file format (sysfs, records).
// maxLen is the longest name the backend's file names leave room for.
func CheckName(name string, maxLen int) error {
	switch {
	case name == "":
		return fmt.Errorf("empty volume name: %w", sentinel.ErrInvalid)
	case name == "." || name == "..":
		return fmt.Errorf("volume name %s not allowed: %w", quote.Short(name), sentinel.ErrInvalid)
	case len(name) > maxLen:
		return fmt.Errorf("volume name longer than %d bytes: %w", maxLen, sentinel.ErrInvalid)
	}
	for _, c := range []byte(name) {
		if c == '/' || c < 0x20 || c == 0x7f {
			return fmt.Errorf("volume name %s: contains '/' or a control character: %w", quote.Short(name), sentinel.ErrInvalid)
		}
	}
	return nil
}

// CheckExpand checks the arguments of a file-backed backend's Expand: a
// name as CheckName(name, maxLen) takes it, and a size that is a positive
// multiple of 512 bytes (whole sectors); either failing is
// sentinel.ErrInvalid.
func CheckExpand(name string, maxLen int, sizeBytes int64) error {
	const sector = 512
	if err := CheckName(name, maxLen); err != nil {
		return err
	}
	if sizeBytes <= 0 || sizeBytes%sector != 0 {
		return fmt.Errorf("size %d: must be a positive multiple of %d bytes: %w", sizeBytes, sector, sentinel.ErrInvalid)
	}
	return nil
}

// OpErrors returns a backend's two error constructors for volumes:
// opErr(op, name, err) wraps err as `<backend>: <op> volume "<name>":
// <err>`, and opErrf does the same with a formatted cause (which may wrap
// with %w).
func OpErrors(backend string) (
	opErr func(op, name string, err error) error,
	opErrf func(op, name, format string, args ...any) error,
) {
	opErr = KindErrors(backend, "volume")
	opErrf = func(op, name, format string, args ...any) error {
		return opErr(op, name, fmt.Errorf(format, args...))
	}
	return opErr, opErrf
}

// KindErrors returns the error constructor of a backend for one kind of
// object (volume, snapshot): `<backend>: <op> <kind> "<name>": <err>`.
func KindErrors(backend, kind string) func(op, name string, err error) error {
	return func(op, name string, err error) error {
		return fmt.Errorf("%s: %s %s %q: %w", backend, op, kind, name, err)
	}
}
