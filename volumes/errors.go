package volumes

import (
	"fmt"
	"regexp"

	"github.com/blockvol/blockvol/internal/quote"

	"github.com/blockvol/blockvol/internal/sentinel"
)

// The plugin's errors wrap the sentinels of internal/sentinel (ErrInvalid,
// ErrNotFound, ErrInUse, ErrBusy). The message a Docker user sees is the
// whole wrapped text; the sentinel lets callers and tests classify it.
// userError is an error whose text is already a complete sentence for the
// user; Is reports the sentinel it belongs to.
type userError struct {
	kind error
	msg  string
	err  error // optional cause, for errors.Is/As
}

func (e *userError) Error() string { return e.msg }

func (e *userError) Is(target error) bool { return target == e.kind }

func (e *userError) Unwrap() error { return e.err }

func invalidf(format string, args ...any) error {
	return &userError{kind: sentinel.ErrInvalid, msg: fmt.Sprintf(format, args...)}
}

// maxNameLen bounds volume names; Cinder allows 255, file names 255 bytes,
// and ours become file names with a suffix.
const maxNameLen = 128

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// ValidateName accepts the volume names Docker's local driver accepts,
// minus anything that could escape a directory: letters, digits, '_', '.',
// '-', starting with a letter or digit, at most 128 characters.
func ValidateName(name string) error {
	switch {
	case name == "":
		return invalidf("volume name is empty")
	case len(name) > maxNameLen:
		return invalidf("volume name is %d characters long; the limit is %d", len(name), maxNameLen)
	case !nameRE.MatchString(name):
		return invalidf("volume name %s is not valid: use letters, digits, '_', '.' and '-', starting with a letter or digit", quote.Short(name))
	}
	return nil
}
