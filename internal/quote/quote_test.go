package quote

import (
	"strings"
	"testing"
)

func TestShortAndPrefix(t *testing.T) {
	long := strings.Repeat("a", 10<<20)
	for _, tc := range []struct{ in, short, prefix string }{
		{"", `""`, ""},
		{"vol-1", `"vol-1"`, "vol-1"},
		{"a\nb", `"a\nb"`, "a\nb"},
		{strings.Repeat("x", MaxBytes), `"` + strings.Repeat("x", MaxBytes) + `"`, strings.Repeat("x", MaxBytes)},
		{long, `"` + long[:MaxBytes] + `"…`, long[:MaxBytes] + "…"},
		// A character is never cut in half.
		{strings.Repeat("x", MaxBytes-1) + "é" + "tail", `"` + strings.Repeat("x", MaxBytes-1) + `"…`, strings.Repeat("x", MaxBytes-1) + "…"},
	} {
		if got := Short(tc.in); got != tc.short {
			t.Errorf("Short(%.20q…) = %.80q, want %.80q", tc.in, got, tc.short)
		}
		if got := Prefix(tc.in); got != tc.prefix {
			t.Errorf("Prefix(%.20q…) = %.80q, want %.80q", tc.in, got, tc.prefix)
		}
	}
}
