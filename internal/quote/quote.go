// Package quote shows values that come from users (volume names, option
// keys and values, mount IDs) in errors and logs: never more than a short
// prefix, so that a huge value floods neither an error nor a log.
package quote

import (
	"strconv"
	"unicode/utf8"
)

// MaxBytes is the longest prefix of a value shown: the longest valid volume
// name is shown whole.
const MaxBytes = 128

// Short returns s quoted in Go syntax, cut to MaxBytes bytes with "…" after
// the closing quote when it was longer.
func Short(s string) string {
	p := Prefix(s)
	if len(p) < len(s) {
		return strconv.Quote(p[:len(p)-len("…")]) + "…"
	}
	return strconv.Quote(s)
}

// Prefix returns s cut to MaxBytes bytes (on a character boundary) with "…"
// appended when it was longer, unquoted: for log attributes, which the log
// handler quotes itself.
func Prefix(s string) string {
	if len(s) <= MaxBytes {
		return s
	}
	cut := MaxBytes
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
