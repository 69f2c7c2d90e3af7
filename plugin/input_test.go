package plugin

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/volumes"
	"github.com/docker/go-plugins-helpers/volume"
)

// A huge value in any field of a request is refused with a one-sentence
// error quoting at most a short prefix of it, and no log line at any
// level carries more than that prefix.
func TestHugeUserValuesAreQuotedShort(t *testing.T) {
	h := newHarness(t)
	var logs bytes.Buffer
	h.d = h.newDriverWith(func(c *volumes.Config) {
		c.Log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	h.create("v", nil)
	huge := strings.Repeat("Z", 10<<20)
	type call struct {
		what string
		run  func() error
	}
	calls := []call{
		{"create, huge name", func() error { return h.d.Create(&volume.CreateRequest{Name: huge}) }},
		{"mount, huge name", func() error { _, err := h.d.Mount(&volume.MountRequest{Name: huge, ID: id1}); return err }},
		{"remove, huge name", func() error { return h.d.Remove(&volume.RemoveRequest{Name: huge}) }},
		{"get, huge name", func() error { _, err := h.d.Get(&volume.GetRequest{Name: huge}); return err }},
		{"create, huge key", func() error {
			return h.d.Create(&volume.CreateRequest{Name: "k", Options: map[string]string{huge: "1"}})
		}},
		{"mount, huge ID", func() error { _, err := h.d.Mount(&volume.MountRequest{Name: "v", ID: huge}); return err }},
		{"unmount, huge ID", func() error { return h.d.Unmount(&volume.UnmountRequest{Name: "v", ID: huge}) }},
	}
	for _, key := range []string{"size", "fstype", "overwritefs", "preempt", "iops", "backend", "mountopts", "volumetype", "availabilityzone"} {
		calls = append(calls, call{"create, huge " + key, func() error {
			return h.d.Create(&volume.CreateRequest{Name: "o", Options: map[string]string{key: huge}})
		}})
	}
	for _, c := range calls {
		before := logs.Len()
		err := c.run()
		if !errors.Is(err, sentinel.ErrInvalid) && !errors.Is(err, sentinel.ErrNotFound) {
			t.Errorf("%s: %.300v; want a refusal", c.what, err)
			continue
		}
		if len(err.Error()) > 400 || strings.Contains(err.Error(), strings.Repeat("Z", 200)) {
			t.Errorf("%s: error of %d bytes: %.300s…", c.what, len(err.Error()), err)
		}
		if n := logs.Len() - before; n > 2000 {
			t.Errorf("%s: %d bytes logged: %.300s…", c.what, n, logs.String()[before:])
		}
	}
	if users := h.core; users == nil {
		t.Fatal("no core")
	}
}

// Mount IDs: Docker's 64 hex digits and other plain IDs are users; the
// ID-less slot's marker and oversized or malformed IDs are refused, and
// never stored.
func TestMountIDs(t *testing.T) {
	h := newHarness(t)
	h.create("v", nil)
	for _, id := range []string{id1, "task-7.mesos:1", strings.Repeat("a", maxIDLen)} {
		if _, err := h.d.Mount(&volume.MountRequest{Name: "v", ID: id}); err != nil {
			t.Errorf("Mount with ID %q: %v", id, err)
		}
		if err := h.d.Unmount(&volume.UnmountRequest{Name: "v", ID: id}); err != nil {
			t.Errorf("Unmount with ID %q: %v", id, err)
		}
	}
	for id, want := range map[string]string{
		anonymousUser:                   `mount ID "<no-id>" is reserved for mounts without an ID; send no ID instead`,
		strings.Repeat("a", maxIDLen+1): "mount ID is 129 bytes long; the limit is 128 (Docker's are 64 hex digits)",
		"a/b":                           `mount ID "a/b" is not valid: use letters, digits, '_', '.', ':' and '-', starting with a letter or digit (Docker's are 64 hex digits)`,
		"a\nb":                          `mount ID "a\nb" is not valid`,
		"-x":                            `mount ID "-x" is not valid`,
	} {
		_, err := h.d.Mount(&volume.MountRequest{Name: "v", ID: id})
		if !errors.Is(err, sentinel.ErrInvalid) || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("Mount with ID %.40q = %v; want %q", id, err, want)
		}
		if err := h.d.Unmount(&volume.UnmountRequest{Name: "v", ID: id}); !errors.Is(err, sentinel.ErrInvalid) {
			t.Errorf("Unmount with ID %.40q = %v; want a refusal", id, err)
		}
	}
	if calls := h.be.callLog(); count(calls, "attach") != 3 {
		t.Errorf("backend calls %v; want the three valid mounts only", calls)
	}
}
