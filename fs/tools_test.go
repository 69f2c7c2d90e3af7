package fs

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Every program named in this package's code is in Tools, so that
// `blockvol doctor` checks it.
func TestToolsListsEveryProgramRun(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, tool := range Tools {
		listed[tool.Name] = true
	}
	run := regexp.MustCompile(`Run\.Run\(ctx, "([^"]+)"|return \[\]string\{"([a-z0-9.]+)", `)
	found := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range run.FindAllStringSubmatch(string(src), -1) {
			name := m[1] + m[2]
			found++
			if !listed[name] {
				t.Errorf("%s runs %s, which Tools does not list", f, name)
			}
		}
	}
	if found < len(Tools) {
		t.Fatalf("found %d program calls in the sources, fewer than the %d tools listed: the pattern is stale", found, len(Tools))
	}
}
