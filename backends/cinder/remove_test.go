package cinder

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
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

// Docker asks Get right before Remove: Remove deletes the volume that Get
// found without listing again; when that volume is gone meanwhile (deleted
// and made again by another host), it looks the name up afresh and deletes
// the new one, never reporting a removal that did not happen.
func TestRemoveAfterGetUsesItsLookup(t *testing.T) {
	const oldID, newID = "0b0b0b0b-0000-4000-8000-00000000000a", "0b0b0b0b-0000-4000-8000-00000000000b"
	for _, tc := range []struct {
		name      string
		oldGone   bool
		wantLists int
		wantDel   []string
	}{
		{"remembered volume deleted", false, 1, []string{oldID}},
		{"remembered volume gone, another of the name", true, 2, []string{oldID, newID}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeCloud(t)
			var mu sync.Mutex
			lists, current := 0, oldID
			var deletes []string
			gone := map[string]bool{}
			f.volumesHook = func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				lists++
				fmt.Fprintf(w, `{"volumes": [{"id": %q, "name": "v", "status": "available", "size": 1, "metadata": {}}]}`, current)
			}
			f.otherHook = func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				id := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
				if r.Method == http.MethodDelete && !gone[id] {
					deletes = append(deletes, id)
					gone[id] = true
					w.WriteHeader(http.StatusAccepted)
					return
				}
				w.WriteHeader(http.StatusNotFound)
				fmt.Fprint(w, `{"itemNotFound": {"code": 404, "message": "not found"}}`)
			}
			b, _ := unitBackend(t, f.config(), nil)
			if _, err := b.Get(t.Context(), "v"); err != nil {
				t.Fatal(err)
			}
			if tc.oldGone {
				mu.Lock()
				gone[oldID], current = true, newID
				deletes = append(deletes, oldID) // by the other host
				mu.Unlock()
			}
			if err := b.Remove(t.Context(), "v"); err != nil {
				t.Fatalf("Remove = %v", err)
			}
			mu.Lock()
			defer mu.Unlock()
			if lists != tc.wantLists || !slices.Equal(deletes, tc.wantDel) {
				t.Errorf("%d lists, deletes %v; want %d lists, deletes %v", lists, deletes, tc.wantLists, tc.wantDel)
			}
		})
	}
}
