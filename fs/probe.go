package fs

import (
	"context"
	"fmt"
	"strings"

	"github.com/blockvol/blockvol/hostexec"
)

// blkid exit statuses (blkid(8)).
const (
	blkidNothingFound = 2 // no signature found: the device is blank
	blkidAmbivalent   = 8 // several conflicting signatures (low-level probe)
)

// signature is what a low-level probe found on a device.
type signature struct {
	Type   string // TYPE=: a filesystem, LVM2_member, swap, crypto_LUKS, ...
	PTType string // PTTYPE=: a partition table (dos, gpt, ...)
	UUID   string // UUID=: the filesystem's UUID, when it has one
}

// blank reports whether nothing at all was found.
func (s signature) blank() bool { return s.Type == "" && s.PTType == "" }

// ours reports whether the device holds exactly a filesystem blockvol
// creates, and no partition table.
func (s signature) ours() bool { return s.PTType == "" && supported(s.Type) }

// describe names what was found, for error messages ("a dos partition table").
func (s signature) describe() string {
	switch {
	case s.PTType != "" && s.Type != "":
		return fmt.Sprintf("%s partition table and %s signature", article(s.PTType), article(s.Type))
	case s.PTType != "":
		return fmt.Sprintf("%s partition table", article(s.PTType))
	case s.Type != "":
		return fmt.Sprintf("%s signature", article(s.Type))
	}
	return "an unrecognised signature"
}

// article prefixes word with "a" or "an" (by its first letter only).
func article(word string) string {
	if word != "" && strings.ContainsRune("aeiouAEIOU", rune(word[0])) {
		return "an " + word
	}
	return "a " + word
}

// probe runs `blkid -p -o export dev`: a low-level probe that reads the
// device itself and never trusts the blkid cache. A device on which blkid
// finds nothing (exit status 2) yields the zero signature.
func (f *FS) probe(ctx context.Context, dev string) (signature, error) {
	out, err := f.Run.Run(ctx, "blkid", "-p", "-o", "export", dev)
	switch code := hostexec.ExitCode(err); {
	case err == nil:
	case code == blkidNothingFound:
		return signature{}, nil
	case code == blkidAmbivalent:
		return signature{}, fmt.Errorf("device %s holds several conflicting signatures (blkid -p is ambivalent); "+
			"blockvol formats only blank devices and never overwrites them: %w", dev, ErrForeignSignature)
	default:
		return signature{}, fmt.Errorf("probe device %s: %w", dev, err)
	}
	sig := parseBlkidExport(string(out))
	if sig.blank() {
		// blkid succeeded yet named no TYPE nor PTTYPE: something is there
		// that we cannot classify, so it is not ours to format.
		return sig, fmt.Errorf("device %s holds %s (blkid: %q); blockvol formats only blank devices and never overwrites it: %w",
			dev, sig.describe(), strings.TrimSpace(string(out)), ErrForeignSignature)
	}
	return sig, nil
}

// parseBlkidExport reads the KEY=value lines of `blkid -o export`.
func parseBlkidExport(out string) signature {
	var sig signature
	for _, line := range strings.Split(out, "\n") {
		key, val, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		val = strings.Trim(val, `"`)
		switch key {
		case "TYPE":
			sig.Type = val
		case "PTTYPE":
			sig.PTType = val
		case "UUID":
			sig.UUID = val
		}
	}
	return sig
}
