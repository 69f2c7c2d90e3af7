package iscsitarget

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/sentinel"
)

const (
	// maxIQNLen is the longest iSCSI name (RFC 3720, 3.2.6.1).
	maxIQNLen = 223
	// maxNameLen keeps every file name of a volume within NAME_MAX,
	// including the helper's temporary "." + <name>.json + ".tmp-XXXXXX".
	maxNameLen = 255 - len(".") - len(".json") - len(".tmp-XXXXXX")
)

// checkName: see backends.CheckName.
func checkName(name string) error { return backends.CheckName(name, maxNameLen) }

// iqnFor returns the target name of a volume: <prefix>:<name> when the
// name is made of what an iSCSI name allows after normalization (lower-case
// letters, digits, '.', '-'); otherwise the name lower-cased with every
// other character replaced by '-', followed by '-' and 8 hex digits of its
// SHA-256, so that "Data_1" and "data-1" stay apart. tgt refuses names
// with '_' and other characters; upper case it accepts, but initiators
// may normalize it away.
func iqnFor(prefix, name string) (string, error) {
	suffix := name
	if !iqnClean(name) {
		var sb strings.Builder
		for _, c := range strings.ToLower(name) {
			if c < 0x80 && iqnClean(string(c)) {
				sb.WriteRune(c)
			} else {
				sb.WriteByte('-')
			}
		}
		sum := sha256.Sum256([]byte(name))
		suffix = sb.String() + "-" + hex.EncodeToString(sum[:4])
	}
	iqn := prefix + ":" + suffix
	if len(iqn) > maxIQNLen {
		return "", fmt.Errorf("volume name %q is too long for an iSCSI target name (%s) of at most %d bytes: %w", name, iqn, maxIQNLen, sentinel.ErrInvalid)
	}
	return iqn, nil
}

func iqnClean(s string) bool {
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-') {
			return false
		}
	}
	return s != ""
}
