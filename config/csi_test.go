package config

import (
	"strings"
	"testing"
)

func TestCSIEndpoint(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{"unix:///run/blockvol/csi.sock", "/run/blockvol/csi.sock", ""},
		{"unix:/run/blockvol/csi.sock", "/run/blockvol/csi.sock", ""},
		{"unix:///run/x/../csi.sock", "/run/csi.sock", ""},
		{"unix://run/csi.sock", "", "must be unix:///absolute/path.sock"},
		{"tcp://127.0.0.1:10000", "", "must be unix:///absolute/path.sock"},
		{"/run/csi.sock", "", "must be unix:///absolute/path.sock"},
		{"unix:///" + strings.Repeat("a", 300), "/" + strings.Repeat("a", 300), ""},
	} {
		got, err := CSISocketPath(tc.in)
		if tc.err == "" && (err != nil || got != tc.want) {
			t.Errorf("CSISocketPath(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
		if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("CSISocketPath(%q) = %q, %v; want an error containing %q", tc.in, got, err, tc.err)
		}
	}
	if _, err := Parse([]byte("[csi]\nendpoint = \"tcp://0.0.0.0:1\"\n")); err == nil || !strings.Contains(err.Error(), "csi.endpoint") {
		t.Fatalf("Parse with a tcp csi.endpoint = %v; want it refused", err)
	}
	cfg, err := Parse([]byte("[csi]\nendpoint = \"unix:///run/blockvol/csi.sock\"\n"))
	if err != nil || cfg.CSI.Endpoint != "unix:///run/blockvol/csi.sock" {
		t.Fatalf("Parse = %+v, %v", cfg.CSI, err)
	}
	if cfg, _ := Parse(nil); cfg.CSI.Endpoint != "" {
		t.Fatalf("CSI is on by default: %+v", cfg.CSI)
	}
}
