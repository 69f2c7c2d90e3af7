package volumes

import (
	"encoding/json"
	"fmt"
	"github.com/blockvol/blockvol/fs"
	"github.com/blockvol/blockvol/internal/quote"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Options are a volume's parsed Create options. They are persisted with the
// volume (in the backend's Meta) because dvdcli, and so Mesos, sends
// options only with Create, never with Mount.
type Options struct {
	SizeBytes   int64  `json:"size_bytes"`
	FSType      string `json:"fstype"`
	OverwriteFS bool   `json:"overwritefs,omitempty"`
	// Preempt lets a Mount take the volume over from another host that
	// still has it attached (shared backends only).
	Preempt          bool     `json:"preempt,omitempty"`
	VolumeType       string   `json:"volumetype,omitempty"`
	IOPS             int      `json:"iops,omitempty"`
	AvailabilityZone string   `json:"availabilityzone,omitempty"`
	MountOpts        []string `json:"mountopts,omitempty"`
	Backend          string   `json:"backend"`
	// From names the snapshot (or else the volume) a clone is made from.
	// SizeBytes is 0 when a clone's size was not given: its source's then.
	From string `json:"from,omitempty"`
}

// OptionDefaults fill the options a Create leaves out.
type OptionDefaults struct {
	Size      string
	FSType    string
	MountOpts string
	Backend   string
	// Backends are the configured backend names, for validating `backend`.
	Backends []string
}

// MountOptionParser validates the `mountopts` value; the fs package
// provides the real one.
type MountOptionParser func(string) ([]string, error)

const (
	gib = int64(1) << 30
	// maxSizeBytes bounds `size` far above any real volume (1 PiB) so that
	// arithmetic on it never overflows.
	maxSizeBytes = int64(1) << 50
	// maxOptionLen bounds every option value (Cinder's names of volume
	// types and zones are at most 255 characters): values are stored with
	// the volume and passed to backends.
	maxOptionLen = 255
)

// optionKeys maps every accepted key (lower case) to its canonical name.
var optionKeys = map[string]string{
	"size":             "size",
	"fstype":           "fstype",
	"newfstype":        "fstype",
	"overwritefs":      "overwritefs",
	"type":             "volumetype",
	"volumetype":       "volumetype",
	"iops":             "iops",
	"availabilityzone": "availabilityzone",
	"mountopts":        "mountopts",
	"backend":          "backend",
	"preempt":          "preempt",
	"from":             "from",
}

func acceptedKeys() string {
	keys := make([]string, 0, len(optionKeys))
	for k := range optionKeys {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, ", ")
}

// ParseOptions turns Docker's raw option map into Options. Keys are
// case-insensitive; an unknown key, a key given twice under two spellings,
// or a bad value yields an error wrapping sentinel.ErrInvalid whose text names the
// key and what it accepts.
func ParseOptions(raw map[string]string, def OptionDefaults, parseMountOpts MountOptionParser) (Options, error) {
	canon := map[string]string{}
	given := map[string]string{}
	for k, v := range raw {
		lk := strings.ToLower(strings.TrimSpace(k))
		c, ok := optionKeys[lk]
		if !ok {
			return Options{}, invalidf("unknown option %s; accepted options are %s", quote.Short(k), acceptedKeys())
		}
		if prev, dup := given[c]; dup {
			return Options{}, invalidf("options %s and %s both set %s; give it once", quote.Short(prev), quote.Short(k), c)
		}
		given[c] = k
		if len(v) > maxOptionLen {
			return Options{}, invalidf("option %s is %d bytes long; the limit is %d", c, len(v), maxOptionLen)
		}
		canon[c] = strings.TrimSpace(v)
	}
	get := func(key, fallback string) string {
		if v, ok := canon[key]; ok {
			return v
		}
		return fallback
	}

	var o Options
	var err error
	if v, ok := canon["from"]; ok {
		if err := ValidateName(v); err != nil {
			return Options{}, invalidf("option from: %v", err)
		}
		o.From = v
	}
	if _, sized := canon["size"]; o.From == "" || sized {
		if o.SizeBytes, err = ParseSize(get("size", def.Size)); err != nil {
			return Options{}, err
		}
	}
	o.FSType = strings.ToLower(get("fstype", def.FSType))
	minSize := fs.MinSizeBytes(o.FSType)
	if minSize == 0 {
		return Options{}, invalidf("option fstype %s is not supported; use ext4 or xfs", quote.Short(o.FSType))
	}
	if o.SizeBytes < minSize && o.SizeBytes != 0 {
		return Options{}, invalidf("option size %s is too small for %s, which needs at least %s", FormatSize(o.SizeBytes), o.FSType, FormatSize(minSize))
	}
	if v, ok := canon["overwritefs"]; ok {
		if o.OverwriteFS, err = strconv.ParseBool(v); err != nil {
			return Options{}, invalidf("option overwritefs %s must be true or false", quote.Short(v))
		}
	}
	if o.From != "" && o.OverwriteFS {
		return Options{}, invalidf("options from and overwritefs contradict each other: a clone keeps its source's data")
	}
	if v, ok := canon["preempt"]; ok {
		if o.Preempt, err = strconv.ParseBool(v); err != nil {
			return Options{}, invalidf("option preempt %s must be true or false", quote.Short(v))
		}
	}
	o.VolumeType = canon["volumetype"]
	if v, ok := canon["iops"]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return Options{}, invalidf("option iops %s must be a positive whole number", quote.Short(v))
		}
		o.IOPS = n
	}
	o.AvailabilityZone = canon["availabilityzone"]
	if o.MountOpts, err = parseMountOpts(get("mountopts", def.MountOpts)); err != nil {
		return Options{}, invalidf("option mountopts: %v", err)
	}
	o.Backend = get("backend", def.Backend)
	if !slices.Contains(def.Backends, o.Backend) {
		return Options{}, invalidf("option backend %s is not configured on this host; configured backends: %s", quote.Short(o.Backend), strings.Join(def.Backends, ", "))
	}
	return o, nil
}

// ParseSize reads a size: a whole number of GiB ("10"), or a whole number
// with a unit: M, G, T (binary: MiB, GiB, TiB; "Mi", "Gi", "Ti", "MB",
// "GB", "TB" are read the same way).
func ParseSize(s string) (int64, error) {
	orig := s
	s = strings.TrimSpace(s)
	bad := func() (int64, error) {
		return 0, invalidf("option size %s must be a positive whole number of GiB, or a number with a unit such as 512M, 10G or 2T", quote.Short(orig))
	}
	if s == "" {
		return bad()
	}
	unit := gib
	upper := strings.ToUpper(s)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{
		{"MIB", 1 << 20}, {"GIB", 1 << 30}, {"TIB", 1 << 40},
		{"MI", 1 << 20}, {"GI", 1 << 30}, {"TI", 1 << 40},
		{"MB", 1 << 20}, {"GB", 1 << 30}, {"TB", 1 << 40},
		{"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40},
	} {
		if strings.HasSuffix(upper, u.suffix) {
			unit = u.mult
			s = strings.TrimSpace(s[:len(s)-len(u.suffix)])
			break
		}
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return bad()
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return bad()
	}
	if n > math.MaxInt64/unit || n*unit > maxSizeBytes {
		return 0, invalidf("option size %s is larger than the largest volume blockvol makes (%s)", quote.Short(orig), FormatSize(maxSizeBytes))
	}
	return n * unit, nil
}

// FormatSize prints a byte count in the largest binary unit that keeps it
// readable.
func FormatSize(n int64) string {
	switch {
	case n >= 1<<40 && n%(1<<40) == 0:
		return fmt.Sprintf("%d TiB", n>>40)
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20:
		return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20))
	default:
		return fmt.Sprintf("%d bytes", n)
	}
}

// metaOptionsKey holds the JSON-encoded Options in a backend volume's Meta.
const metaOptionsKey = "blockvol.options"

// metaOverwritePendingKey is "true" from a Create with overwritefs=true
// until the first Mount has acted on it; it is cleared before the wipe, so
// a volume is wiped at most once.
const metaOverwritePendingKey = "blockvol.overwrite-pending"

// metaFreshKey is "true" from Create until a first use has handed the
// volume out (mounted, emptied): a first use interrupted by kill -9 after
// its mkfs left a filesystem with lost+found, and the next first use
// finishes it the same way (removes lost+found), so that a fresh volume is
// always handed out empty. A filesystem found is never formatted over
// (without overwritefs).
const metaFreshKey = "blockvol.fresh"

func encodeMeta(o Options) map[string]string {
	m := map[string]string{metaOptionsKey: encodeOptions(o), metaFreshKey: "true"}
	if o.OverwriteFS {
		m[metaOverwritePendingKey] = "true"
	}
	return m
}

func encodeOptions(o Options) string {
	b, _ := json.Marshal(o) // Options holds only plain fields: cannot fail
	return string(b)
}

// decodeMeta reads the options stored with a volume. A volume blockvol did
// not create (no stored options) gets the defaults.
func decodeMeta(meta map[string]string, def Options) (Options, error) {
	s, ok := meta[metaOptionsKey]
	if !ok {
		return def, nil
	}
	var o Options
	if err := json.Unmarshal([]byte(s), &o); err != nil {
		return Options{}, fmt.Errorf("stored options are unreadable: %w", err)
	}
	return o, nil
}
