package cinder

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/blockvol/blockvol/internal/sentinel"
)

// Metadata keys blockvol writes on a Cinder volume.
const (
	// tagKey = tagValue marks a volume created by blockvol; List shows only
	// those.
	tagKey   = "blockvol"
	tagValue = "1"
	// metaPrefix + "0", "1", ... hold the JSON of backends.Volume.Meta, cut
	// into pieces of at most maxMetaValue bytes (Cinder keeps at most 255
	// characters per value).
	metaPrefix = "blockvol.meta."
	// claimHostKey and claimUUIDKey name the host that has the volume
	// attached (or is attaching it). Cinder shows an attachment's host only
	// to admins, so this is how every host learns who holds a volume.
	claimHostKey = "blockvol.host"
	claimUUIDKey = "blockvol.host_uuid"

	maxMetaValue = 255
	// maxMetaJSON bounds the encoded Meta (about 256 metadata items).
	maxMetaJSON = 64 << 10
)

// encodeMeta returns the metadata items that store meta: the JSON of the
// map cut into pieces, at rune boundaries, of at most maxMetaValue bytes.
// A nil or empty map needs no item.
func encodeMeta(meta map[string]string) (map[string]string, error) {
	out := map[string]string{}
	if len(meta) == 0 {
		return out, nil
	}
	data, err := json.Marshal(meta)
	if err != nil {
		return nil, err
	}
	if len(data) > maxMetaJSON {
		return nil, fmt.Errorf("volume metadata of %d bytes exceeds the %d the cinder backend stores: %w", len(data), maxMetaJSON, sentinel.ErrInvalid)
	}
	s := string(data) // valid UTF-8: json.Marshal replaces invalid bytes
	for i := 0; s != ""; i++ {
		n := min(len(s), maxMetaValue)
		for n < len(s) && !utf8.RuneStart(s[n]) {
			n--
		}
		out[metaPrefix+strconv.Itoa(i)] = s[:n]
		s = s[n:]
	}
	return out, nil
}

// decodeMeta reads back what encodeMeta stored in a volume's metadata. A
// volume without pieces has nil Meta; missing or garbled pieces are an
// error (never silently default options).
func decodeMeta(md map[string]string) (map[string]string, error) {
	var idx []int
	for k := range md {
		if n, ok := metaIndex(k); ok {
			idx = append(idx, n)
		}
	}
	if len(idx) == 0 {
		return nil, nil
	}
	sort.Ints(idx)
	var b strings.Builder
	for i, n := range idx {
		if n != i {
			return nil, fmt.Errorf("stored volume metadata is incomplete: item %s%d is missing", metaPrefix, i)
		}
		b.WriteString(md[metaPrefix+strconv.Itoa(n)])
	}
	var meta map[string]string
	if err := json.Unmarshal([]byte(b.String()), &meta); err != nil {
		return nil, fmt.Errorf("stored volume metadata is unreadable: %w", err)
	}
	return meta, nil
}

// metaIndex parses a piece key, metaPrefix + a decimal number.
func metaIndex(key string) (int, bool) {
	s, ok := strings.CutPrefix(key, metaPrefix)
	if !ok || s == "" || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	return n, err == nil && n >= 0
}

// isOurs reports whether blockvol created the volume.
func isOurs(md map[string]string) bool { return md[tagKey] == tagValue }
