package cinder

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// Remove says success only when Cinder confirms the deletion (404): a
// volume still deleting when the call's time is up, or one Cinder failed
// to delete, is an error.
func TestRemoveWaitsForCinderToConfirm(t *testing.T) {
	const id = "0b0b0b0b-0000-4000-8000-000000000001"
	for _, tc := range []struct {
		name    string
		after   string // status after the DELETE; "" = gone (404)
		wantErr string
	}{
		{"deleted", "", ""},
		{"still deleting", "deleting", "had not finished deleting"},
		{"error_deleting", "error_deleting", "it is error_deleting"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeCloud(t)
			f.volumesHook = func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, `{"volumes": [{"id": %q, "name": "v", "status": "available", "size": 1, "metadata": {}}]}`, id)
			}
			deleted := false
			f.otherHook = func(w http.ResponseWriter, r *http.Request) {
				switch {
				case r.Method == http.MethodDelete && strings.HasSuffix(r.URL.Path, "/volumes/"+id):
					deleted = true
					w.WriteHeader(http.StatusAccepted)
				case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/volumes/"+id) && deleted && tc.after != "":
					fmt.Fprintf(w, `{"volume": {"id": %q, "name": "v", "status": %q, "size": 1, "metadata": {}}}`, id, tc.after)
				default:
					w.WriteHeader(http.StatusNotFound)
					fmt.Fprint(w, `{"itemNotFound": {"code": 404, "message": "not found"}}`)
				}
			}
			b, _ := unitBackend(t, f.config(), nil)
			b.pollMin, b.pollMax = 10*time.Millisecond, 20*time.Millisecond
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			err := b.Remove(ctx, "v")
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Remove = %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("Remove = %v; want an error saying %q", err, tc.wantErr)
			}
			if !deleted {
				t.Fatal("no DELETE was sent")
			}
		})
	}
}

// The doctor's check changes nothing on the host: no state directory, no
// host UUID file, no login before Check is asked.
func TestNewCheckerChangesNothing(t *testing.T) {
	f := newFakeCloud(t)
	cfg := f.config()
	root := t.TempDir()
	cfg.HostUUID, cfg.HostUUIDFile, cfg.StateDir = "", root+"/etc/host-uuid", root+"/state"
	c, err := NewChecker(cfg, &fakeInitiator{name: "iqn.2024-01.test:doctor"})
	if err != nil {
		t.Fatal(err)
	}
	if n := f.issued(); n != 0 {
		t.Errorf("%d logins before Check was asked", n)
	}
	if err := c.Check(t.Context()); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if entries, _ := os.ReadDir(root); len(entries) != 0 {
		t.Errorf("the check created %v", entries)
	}
}
