package cinder

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/sentinel"
)

func TestTokenExpiryReauthenticates(t *testing.T) {
	f := newFakeCloud(t)
	b, _ := unitBackend(t, f.config(), nil)
	ctx := context.Background()
	if _, err := b.Get(ctx, "v"); !errors.Is(err, sentinel.ErrNotFound) {
		t.Fatalf("Get = %v, want ErrNotFound", err)
	}
	if n := f.issued(); n != 1 {
		t.Fatalf("%d tokens issued, want 1", n)
	}
	f.expire()
	before := f.cinderCalls.Load()
	if _, err := b.List(ctx); err != nil {
		t.Fatalf("List after the token expired = %v", err)
	}
	if n := f.issued(); n != 2 {
		t.Errorf("%d tokens issued, want 2 (one re-authentication)", n)
	}
	if calls := f.cinderCalls.Load() - before; calls != 2 {
		t.Errorf("%d Cinder requests, want 2 (refused, then repeated with the new token)", calls)
	}
}

// A token that expires while Keystone now refuses the credentials: the
// call fails with a sentence saying so.
func TestTokenExpiryWithRefusedLogin(t *testing.T) {
	f := newFakeCloud(t)
	b, _ := unitBackend(t, f.config(), nil)
	if _, err := b.List(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.expire()
	f.mu.Lock()
	f.password = "rotated"
	f.mu.Unlock()
	_, err := b.Get(context.Background(), "v")
	if err == nil || errors.Is(err, sentinel.ErrNotFound) || !strings.Contains(err.Error(), "token expired") || !strings.Contains(err.Error(), "rejected the credentials") {
		t.Errorf("Get = %v, want a failed re-authentication, not ErrNotFound", err)
	}
}

func TestServerErrorsAreNotNotFound(t *testing.T) {
	for _, code := range []int{500, 502, 503} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			f := newFakeCloud(t)
			f.volumesHook = func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(code)
				fmt.Fprintf(w, `{"computeFault": {"code": %d, "message": "backend exploded"}}`, code)
			}
			b, _ := unitBackend(t, f.config(), nil)
			_, err := b.Get(context.Background(), "v")
			if err == nil || errors.Is(err, sentinel.ErrNotFound) {
				t.Fatalf("Get = %v, want an outage error (never ErrNotFound)", err)
			}
			if !strings.Contains(err.Error(), fmt.Sprint(code)) || !strings.Contains(err.Error(), "backend exploded") {
				t.Errorf("Get = %v, want HTTP %d and Cinder's message", err, code)
			}
			if _, err := b.List(context.Background()); err == nil {
				t.Error("List succeeded during an outage")
			}
			if err := b.Check(context.Background()); err == nil || !strings.Contains(err.Error(), fmt.Sprint(code)) {
				t.Errorf("Check = %v, want HTTP %d", err, code)
			}
		})
	}
}

func TestCinderTimeouts(t *testing.T) {
	f := newFakeCloud(t)
	release := make(chan struct{})
	defer close(release)
	f.volumesHook = func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}
	b, _ := unitBackend(t, f.config(), nil)

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, err := b.Get(ctx, "v")
	if err == nil || errors.Is(err, sentinel.ErrNotFound) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Get = %v, want the deadline (never ErrNotFound)", err)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("Get took %s past a 300ms deadline", d)
	}

	// The per-request timeout bounds a call whose context has none.
	cfg := f.config()
	cfg.RequestTimeout = 300 * time.Millisecond
	b2, _ := unitBackend(t, cfg, nil)
	t0 = time.Now()
	_, err = b2.Get(context.Background(), "v")
	if err == nil || errors.Is(err, sentinel.ErrNotFound) || !strings.Contains(err.Error(), "Timeout") {
		t.Errorf("Get = %v, want a request timeout", err)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("Get took %s past a 300ms request timeout", d)
	}
}

// Keystone down at start: New succeeds (the plugin keeps serving), every
// call says Keystone is unreachable, and once Keystone is back the next
// call logs in.
func TestKeystoneUnreachableThenBack(t *testing.T) {
	f := newFakeCloud(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	cfg := f.config()
	cfg.AuthURL = "http://" + addr + "/v3"
	b, logs := unitBackend(t, cfg, nil)
	if !strings.Contains(logs.String(), "cannot reach Keystone at http://"+addr) {
		t.Errorf("start-up log does not say Keystone is unreachable:\n%s", logs)
	}
	for _, call := range []func() error{
		func() error { return b.Check(context.Background()) },
		func() error { _, err := b.Get(context.Background(), "v"); return err },
		func() error { _, err := b.Attach(context.Background(), "v", backends.AttachOptions{}); return err },
	} {
		err := call()
		if err == nil || errors.Is(err, sentinel.ErrNotFound) || !strings.Contains(err.Error(), "cannot reach Keystone at http://"+addr) {
			t.Errorf("call = %v, want \"cannot reach Keystone\"", err)
		}
	}
	// Keystone comes back on the same address.
	l, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s again: %v", addr, err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(f.serveKeystone))
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	defer srv.Close()
	if err := b.Check(context.Background()); err != nil {
		t.Errorf("Check after Keystone came back = %v", err)
	}
}

func TestWrongPassword(t *testing.T) {
	f := newFakeCloud(t)
	cfg := f.config()
	cfg.Password = "not-the-password"
	b, logs := unitBackend(t, cfg, nil)
	err := b.Check(context.Background())
	if err == nil || !strings.Contains(err.Error(), `rejected the credentials of user "demo"`) || !strings.Contains(err.Error(), "401") {
		t.Errorf("Check = %v, want the credentials refused", err)
	}
	_, gerr := b.Get(context.Background(), "v")
	if gerr == nil || errors.Is(gerr, sentinel.ErrNotFound) {
		t.Errorf("Get = %v, want the login failure (never ErrNotFound)", gerr)
	}
	for _, s := range []string{err.Error(), gerr.Error(), logs.String()} {
		if strings.Contains(s, "not-the-password") {
			t.Errorf("the password appears in %q", s)
		}
	}
	if !strings.Contains(logs.String(), "rejected the credentials") {
		t.Errorf("start-up log does not report the refused login:\n%s", logs)
	}
}

func TestApplicationCredential(t *testing.T) {
	f := newFakeCloud(t)
	f.password = "app-secret"
	cfg := f.config()
	cfg.Username, cfg.Password, cfg.ProjectName = "", "", ""
	cfg.ApplicationCredentialID, cfg.ApplicationCredentialSecret = "ac-1", "app-secret"
	b, _ := unitBackend(t, cfg, nil)
	if err := b.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	body := f.authBodies[0]
	f.mu.Unlock()
	auth := body["auth"].(map[string]any)
	id := auth["identity"].(map[string]any)
	ac, _ := id["application_credential"].(map[string]any)
	if fmt.Sprint(id["methods"]) != "[application_credential]" || ac["id"] != "ac-1" || ac["secret"] != "app-secret" {
		t.Errorf("auth body identity = %v", id)
	}
	if _, ok := auth["scope"]; ok {
		t.Errorf("an application credential must not request a scope: %v", auth["scope"])
	}
}

func TestPasswordAuthBody(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(*Config)
		user  string // JSON of auth.identity.password.user, keys sorted by fmt
		scope string
	}{
		{"names", func(*Config) {}, "map[domain:map[name:Default] name:demo password:s3cret]", "map[project:map[domain:map[name:Default] name:demo]]"},
		{"ids", func(c *Config) {
			c.Username, c.UserDomainName, c.UserID = "", "", "u-1"
			c.ProjectName, c.ProjectDomainName, c.ProjectID = "", "", "p-1"
		}, "map[id:u-1 password:s3cret]", "map[project:map[id:p-1]]"},
		{"domain ids", func(c *Config) {
			c.UserDomainName, c.UserDomainID = "", "d-u"
			c.ProjectDomainName, c.ProjectDomainID = "", "d-p"
		}, "map[domain:map[id:d-u] name:demo password:s3cret]", "map[project:map[domain:map[id:d-p] name:demo]]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeCloud(t)
			cfg := f.config()
			tc.edit(&cfg)
			b, _ := unitBackend(t, cfg, nil)
			if err := b.Check(context.Background()); err != nil {
				t.Fatal(err)
			}
			f.mu.Lock()
			auth := f.authBodies[0]["auth"].(map[string]any)
			f.mu.Unlock()
			user := auth["identity"].(map[string]any)["password"].(map[string]any)["user"]
			if got := fmt.Sprint(user); got != tc.user {
				t.Errorf("user = %s, want %s", got, tc.user)
			}
			if got := fmt.Sprint(auth["scope"]); got != tc.scope {
				t.Errorf("scope = %s, want %s", got, tc.scope)
			}
		})
	}
}

func TestMissingEndpoint(t *testing.T) {
	for _, tc := range []struct {
		name    string
		catalog func(string) []any
		region  string
		iface   string
	}{
		{"no block storage", func(string) []any { return nil }, "", ""},
		{"other region", nil, "RegionTwo", ""},
		{"other interface", nil, "", "internal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeCloud(t)
			f.catalog = tc.catalog
			cfg := f.config()
			cfg.Region, cfg.Interface = tc.region, tc.iface
			b, logs := unitBackend(t, cfg, nil)
			err := b.Check(context.Background())
			if err == nil || !strings.Contains(err.Error(), "catalog has no block-storage endpoint") {
				t.Errorf("Check = %v, want the missing endpoint named", err)
			}
			if !strings.Contains(logs.String(), "catalog has no block-storage endpoint") {
				t.Errorf("start-up log does not name the missing endpoint:\n%s", logs)
			}
		})
	}
}

func TestEndpointChoice(t *testing.T) {
	ep := func(typ, url string) any {
		return map[string]any{"type": typ, "endpoints": []any{map[string]any{"interface": "public", "region_id": "RegionOne", "region": "RegionOne", "url": url}}}
	}
	for _, tc := range []struct {
		name     string
		catalog  func(string) []any
		endpoint string
		want     string
	}{
		{"v3 preferred over an earlier v2", func(u string) []any {
			return []any{ep("volumev2", u+"/volume/v2/"+fakeProject), ep("volumev3", u+"/volume/v3/"+fakeProject)}
		}, "", "/volume/v3/" + fakeProject + "/"},
		{"v2 only, pointed at v3", func(u string) []any { return []any{ep("volumev2", u+"/volume/v2/"+fakeProject)} }, "", "/volume/v3/" + fakeProject + "/"},
		{"unversioned", func(u string) []any { return []any{ep("block-storage", u+"/volume")} }, "", "/volume/v3/" + fakeProject + "/"},
		{"explicit with project template", func(string) []any { return nil }, "CINDER/volume/v3/%(project_id)s", "/volume/v3/" + fakeProject + "/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeCloud(t)
			f.catalog = tc.catalog
			cfg := f.config()
			cfg.Endpoint = strings.ReplaceAll(tc.endpoint, "CINDER", f.cinder.URL)
			b, _ := unitBackend(t, cfg, nil)
			c, err := b.client(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if want := f.cinder.URL + tc.want; c.sc.Endpoint != want {
				t.Errorf("endpoint = %s, want %s", c.sc.Endpoint, want)
			}
		})
	}
}

func TestMicroversionChoosesAttachAPI(t *testing.T) {
	for _, tc := range []struct{ max, config, want string }{
		{"3.70", "", AttachAttachments},
		{"3.44", "", AttachAttachments},
		{"3.43", "", AttachLegacy},
		{"", "", AttachLegacy}, // no version document
		{"3.70", AttachLegacy, AttachLegacy},
		{"3.0", AttachAttachments, AttachAttachments},
	} {
		t.Run(tc.max+"/"+tc.config, func(t *testing.T) {
			f := newFakeCloud(t)
			f.maxVersion = tc.max
			cfg := f.config()
			cfg.AttachAPI = tc.config
			b, _ := unitBackend(t, cfg, nil)
			c, err := b.client(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if got := b.attachAPI(c); got != tc.want {
				t.Errorf("attach API = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestNewValidates(t *testing.T) {
	good := Config{AuthURL: "http://k/v3", Username: "u", Password: "p", ProjectName: "p", HostUUID: "6f1c3a52-1b1e-4f5e-9a53-3f1d8e0c2a10"}
	for _, tc := range []struct {
		edit func(*Config)
		want string
	}{
		{func(c *Config) { c.AuthURL = "" }, "auth_url"},
		{func(c *Config) { c.Password = "" }, "password"},
		{func(c *Config) { c.ProjectName = "" }, "project"},
		{func(c *Config) { c.Username = "" }, "username"},
		{func(c *Config) { c.Interface = "private" }, "interface"},
		{func(c *Config) { c.AttachAPI = "nova" }, "attach_api"},
		{func(c *Config) { c.HostUUID = "host-1" }, "not a UUID"},
		{func(c *Config) {
			c.Password, c.ApplicationCredentialSecret, c.ApplicationCredentialName, c.Username = "", "s", "n", ""
		}, "application credential"},
	} {
		cfg := good
		cfg.StateDir = t.TempDir()
		tc.edit(&cfg)
		if _, err := New(cfg, &fakeInitiator{}, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want an error about %s", cfg, err, tc.want)
		}
	}
}

func TestCheckNeedsInitiatorName(t *testing.T) {
	f := newFakeCloud(t)
	b, _ := unitBackend(t, f.config(), &badInitiator{})
	if err := b.Check(context.Background()); err == nil || !strings.Contains(err.Error(), "initiator name") {
		t.Errorf("Check = %v, want the initiator name problem", err)
	}
}

type badInitiator struct{ fakeInitiator }

func (*badInitiator) InitiatorName() (string, error) {
	return "", errors.New("no InitiatorName= line in /etc/iscsi/initiatorname.iscsi")
}

func TestToV3(t *testing.T) {
	for in, want := range map[string]string{
		"http://h:8776/v3/p":      "http://h:8776/v3/p/",
		"http://h:8776/v2/p":      "http://h:8776/v3/p/",
		"http://h:8776/v2.0/p/":   "http://h:8776/v3/p/",
		"http://h:8776/v1/":       "http://h:8776/v3/",
		"http://h:8776":           "http://h:8776/v3/p/",
		"https://h/volume/":       "https://h/volume/v3/p/",
		"https://h/volume/v3.0/p": "https://h/volume/v3.0/p/",
		"https://h/block/v2":      "https://h/block/v3/",
	} {
		if got := toV3(in, "p"); got != want {
			t.Errorf("toV3(%q) = %q, want %q", in, got, want)
		}
	}
}
