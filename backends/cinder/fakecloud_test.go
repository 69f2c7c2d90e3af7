package cinder

// A minimal Keystone + Cinder behind httptest, for what the real services
// cannot be made to do on demand: expire a token, answer 5xx, hang, be
// unreachable, or lack an endpoint.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/blockvol/blockvol/backends"
)

const fakeProject = "p0000000000000000000000000000001"

type fakeCloud struct {
	t        testing.TB
	keystone *httptest.Server
	cinder   *httptest.Server

	mu          sync.Mutex
	password    string
	token       string // the valid token; others get 401
	tokens      int    // tokens issued
	authBodies  []map[string]any
	catalog     func(cinderURL string) []any // nil: block-storage + volumev3
	maxVersion  string                       // version document's max; "" answers 404
	volumesHook http.HandlerFunc             // GET .../volumes/detail; nil: an empty list
	otherHook   http.HandlerFunc             // any other Cinder path; nil: 404
	cinderCalls atomic.Int64
}

func newFakeCloud(t testing.TB) *fakeCloud {
	f := &fakeCloud{t: t, password: "s3cret", maxVersion: "3.70"}
	f.keystone = httptest.NewServer(http.HandlerFunc(f.serveKeystone))
	f.cinder = httptest.NewServer(http.HandlerFunc(f.serveCinder))
	t.Cleanup(f.keystone.Close)
	t.Cleanup(f.cinder.Close)
	return f
}

func (f *fakeCloud) config() Config {
	return Config{
		AuthURL: f.keystone.URL + "/v3", Username: "demo", Password: f.password, UserDomainName: "Default",
		ProjectName: "demo", ProjectDomainName: "Default", HostName: "unit-host",
		HostUUID: "6f1c3a52-1b1e-4f5e-9a53-3f1d8e0c2a10", InitiatorIP: "127.0.0.1",
	}
}

// expire invalidates the current token, as Keystone does when it expires.
func (f *fakeCloud) expire() {
	f.mu.Lock()
	f.token = ""
	f.mu.Unlock()
}

func (f *fakeCloud) issued() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tokens
}

func (f *fakeCloud) serveKeystone(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v3/auth/tokens" {
		http.NotFound(w, r)
		return
	}
	var body map[string]any
	data, _ := io.ReadAll(r.Body)
	_ = json.Unmarshal(data, &body)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.authBodies = append(f.authBodies, body)
	if !bytes.Contains(data, []byte(`"`+f.password+`"`)) {
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}}`)
		return
	}
	f.tokens++
	f.token = fmt.Sprintf("tok-%d", f.tokens)
	cat := []any{
		map[string]any{"type": "identity", "name": "keystone", "endpoints": []any{
			map[string]any{"interface": "public", "region": "RegionOne", "region_id": "RegionOne", "url": f.keystone.URL + "/v3"}}},
		map[string]any{"type": "block-storage", "name": "cinder", "endpoints": []any{
			map[string]any{"interface": "public", "region": "RegionOne", "region_id": "RegionOne", "url": f.cinder.URL + "/volume/v3/" + fakeProject}}},
	}
	if f.catalog != nil {
		cat = f.catalog(f.cinder.URL)
	}
	w.Header().Set("X-Subject-Token", f.token)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(map[string]any{"token": map[string]any{
		"expires_at": "2099-01-01T00:00:00.000000Z",
		"project":    map[string]any{"id": fakeProject, "name": "demo", "domain": map[string]any{"id": "default", "name": "Default"}},
		"user":       map[string]any{"id": "u1", "name": "demo", "domain": map[string]any{"id": "default", "name": "Default"}},
		"catalog":    cat,
	}})
}

func (f *fakeCloud) serveCinder(w http.ResponseWriter, r *http.Request) {
	f.cinderCalls.Add(1)
	f.mu.Lock()
	valid := f.token != "" && r.Header.Get("X-Auth-Token") == f.token
	maxVersion, hook, other := f.maxVersion, f.volumesHook, f.otherHook
	f.mu.Unlock()
	if !valid {
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"error": {"code": 401, "message": "The request you have made requires authentication."}}`)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.URL.Path == "/volume/v3/" || r.URL.Path == "/volume/v3":
		if maxVersion == "" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintf(w, `{"versions": [{"id": "v3.0", "status": "CURRENT", "version": %q, "min_version": "3.0"}]}`, maxVersion)
	case strings.HasSuffix(r.URL.Path, "/volumes/detail"):
		if hook != nil {
			hook(w, r)
			return
		}
		fmt.Fprint(w, `{"volumes": []}`)
	case other != nil:
		other(w, r)
	default:
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprintf(w, `{"itemNotFound": {"code": 404, "message": "no fake for %s"}}`, r.URL.Path)
	}
}

// unitBackend returns a backend of cfg whose start-up login is over, and a
// buffer with everything it logged.
func unitBackend(t testing.TB, cfg Config, ini backends.Initiator) (*Backend, *bytes.Buffer) {
	t.Helper()
	if cfg.StateDir == "" {
		cfg.StateDir = t.TempDir()
	}
	if ini == nil {
		ini = &fakeInitiator{name: "iqn.2024-01.test:unit"}
	}
	var logs syncBuffer
	b, err := New(cfg, ini, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	<-b.warm
	return b, &logs.buf
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
