package fs

import (
	"fmt"
	"github.com/blockvol/blockvol/internal/quote"
	"slices"
	"strings"
	"syscall"
)

// Mount flags syscall does not define (values from linux/mount.h).
const (
	msLazytime     = 1 << 25 // MS_LAZYTIME
	umountNoFollow = 0x8     // UMOUNT_NOFOLLOW
)

// mountOption is how one allowlisted option reaches mount(2): as a flag or
// as filesystem data.
type mountOption struct {
	flag uintptr
	data string
}

// allowedOptions is the allowlist, in the order error messages list it.
var allowedOptions = []string{
	"noatime", "nodiratime", "relatime", "strictatime", "lazytime",
	"discard", "nodiscard", "sync", "dirsync",
}

var optionTable = map[string]mountOption{
	"noatime":     {flag: syscall.MS_NOATIME},
	"nodiratime":  {flag: syscall.MS_NODIRATIME},
	"relatime":    {flag: syscall.MS_RELATIME},
	"strictatime": {flag: syscall.MS_STRICTATIME},
	"lazytime":    {flag: msLazytime},
	"sync":        {flag: syscall.MS_SYNCHRONOUS},
	"dirsync":     {flag: syscall.MS_DIRSYNC},
	"discard":     {data: "discard"},
	"nodiscard":   {data: "nodiscard"},
}

// exclusiveOptions are groups of which at most one option may be given.
var exclusiveOptions = [][]string{
	{"noatime", "relatime", "strictatime"},
	{"discard", "nodiscard"},
}

// ParseMountOptions validates a comma-separated list of mount options given
// by a user against the allowlist noatime, nodiratime, relatime,
// strictatime, lazytime, discard, nodiscard, sync, dirsync. Blanks around
// options and empty items are ignored, repeats are dropped; the result keeps
// the order of first appearance and is nil for an empty list. Any other
// option (suid, dev, exec, ro, remount, bind, ...) or two contradicting
// options (noatime,relatime; discard,nodiscard) yield an error wrapping
// ErrInvalidMountOption that names the culprit and lists the accepted
// options. nosuid and nodev are not options here: Mount always applies them.
func ParseMountOptions(s string) ([]string, error) {
	var opts []string
	for _, item := range strings.Split(s, ",") {
		opt := strings.TrimSpace(item)
		if opt == "" || slices.Contains(opts, opt) {
			continue
		}
		if err := checkOption(opt); err != nil {
			return nil, err
		}
		opts = append(opts, opt)
	}
	if err := checkExclusive(opts); err != nil {
		return nil, err
	}
	return opts, nil
}

func checkOption(opt string) error {
	if _, ok := optionTable[opt]; !ok {
		return fmt.Errorf("%w %s: accepted options are %s",
			ErrInvalidMountOption, quote.Short(opt), strings.Join(allowedOptions, ", "))
	}
	return nil
}

func checkExclusive(opts []string) error {
	for _, group := range exclusiveOptions {
		var found []string
		for _, o := range opts {
			if slices.Contains(group, o) {
				found = append(found, o)
			}
		}
		if len(found) > 1 {
			return fmt.Errorf("%w: %s contradict each other, give at most one of %s",
				ErrInvalidMountOption, strings.Join(found, " and "), strings.Join(group, ", "))
		}
	}
	return nil
}

// mountArgs turns validated options into mount(2) flags and data. nosuid
// and nodev are always set. Options are checked again here so that Mount
// never passes through anything outside the allowlist, whoever built opts.
func mountArgs(opts []string) (flags uintptr, data string, err error) {
	flags = syscall.MS_NOSUID | syscall.MS_NODEV
	var datas []string
	for _, opt := range opts {
		if err := checkOption(opt); err != nil {
			return 0, "", err
		}
		o := optionTable[opt]
		flags |= o.flag
		if o.data != "" && !slices.Contains(datas, o.data) {
			datas = append(datas, o.data)
		}
	}
	if err := checkExclusive(opts); err != nil {
		return 0, "", err
	}
	return flags, strings.Join(datas, ","), nil
}
