package cinder

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/applicationcredentials"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/tokens"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/sentinel"
)

// TestCloudAuthFailures: each way the login can fail against the real
// Keystone gives one sentence saying which, from Check and from calls,
// and New never fails because of it.
func TestCloudAuthFailures(t *testing.T) {
	requireCloud(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"wrong password", func(c *Config) { c.Password = "wrong" }, `Keystone at http://127.0.0.1:5000/v3 rejected the credentials of user "demo" (HTTP 401`},
		{"unknown project", func(c *Config) { c.ProjectName = "no-such-project" }, "rejected the credentials"},
		{"unknown domain", func(c *Config) { c.UserDomainName = "NoSuchDomain" }, "rejected the credentials"},
		{"keystone unreachable", func(c *Config) { c.AuthURL = "http://" + closed + "/v3" }, "cannot reach Keystone at http://" + closed},
		{"no endpoint in region", func(c *Config) { c.Region = "Nowhere" }, "catalog has no block-storage endpoint"},
		{"no endpoint for interface", func(c *Config) { c.Region, c.Interface = "", "internal" }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := demoConfig("host-a", AttachAuto)
			tc.edit(&cfg)
			b := newCloudBackend(t, cfg, &fakeInitiator{name: "iqn.2024-01.test:host-a"})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := b.Check(ctx)
			if tc.want == "" { // the catalog has internal endpoints: works
				if err != nil {
					t.Errorf("Check = %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Check = %v, want %q", err, tc.want)
			}
			t.Log(err)
			_, gerr := b.Get(ctx, "bvtest-any")
			if gerr == nil || errors.Is(gerr, sentinel.ErrNotFound) || !strings.Contains(gerr.Error(), tc.want) {
				t.Errorf("Get = %v, want %q and never ErrNotFound", gerr, tc.want)
			}
			if strings.Contains(err.Error(), "demopass") || strings.Contains(gerr.Error(), "demopass") {
				t.Error("the password appears in an error")
			}
		})
	}
}

// TestCloudApplicationCredential logs in with an application credential
// (by ID, and by name with the user) made for the demo user, and creates
// and removes a volume with it. It also names the user and project by ID.
func TestCloudApplicationCredential(t *testing.T) {
	requireCloud(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	demo := newCloudBackend(t, demoConfig("host-a", AttachAuto), &fakeInitiator{name: "iqn.2024-01.test:host-a"})
	c, err := demo.client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pc := c.sc.ProviderClient
	res := pc.GetAuthResult().(tokens.CreateResult)
	user, err := res.ExtractUser()
	if err != nil {
		t.Fatal(err)
	}
	project, err := res.ExtractProject()
	if err != nil {
		t.Fatal(err)
	}
	idc, err := openstack.NewIdentityV3(pc, gophercloud.EndpointOpts{Region: "RegionOne"})
	if err != nil {
		t.Fatal(err)
	}
	acName := fmt.Sprintf("bvtest-%d", time.Now().UnixNano())
	ac, err := applicationcredentials.Create(ctx, idc, user.ID, applicationcredentials.CreateOpts{Name: acName, Secret: "app-secret-1"}).Extract()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = applicationcredentials.Delete(context.Background(), idc, user.ID, ac.ID).ExtractErr() })

	byID := Config{AuthURL: keystoneURL, ApplicationCredentialID: ac.ID, ApplicationCredentialSecret: "app-secret-1", HostName: "host-a", InitiatorIP: "127.0.0.1"}
	byName := Config{AuthURL: keystoneURL, ApplicationCredentialName: acName, Username: "demo", UserDomainName: "Default", ApplicationCredentialSecret: "app-secret-1", HostName: "host-a", InitiatorIP: "127.0.0.1"}
	ids := demoConfig("host-a", AttachAuto)
	ids.Username, ids.UserDomainName, ids.UserID = "", "", user.ID
	ids.ProjectName, ids.ProjectDomainName, ids.ProjectID = "", "", project.ID
	for what, cfg := range map[string]Config{"application credential ID": byID, "application credential name": byName, "user and project IDs": ids} {
		t.Run(what, func(t *testing.T) {
			b := newCloudBackend(t, cfg, &fakeInitiator{name: "iqn.2024-01.test:host-a"})
			if err := b.Check(ctx); err != nil {
				t.Fatal(err)
			}
			name := volName(t)
			if _, err := b.Create(ctx, backends.CreateRequest{Name: name, SizeBytes: 1 << 30}); err != nil {
				t.Fatal(err)
			}
			// The demo project's volume, seen by the password login too.
			if _, err := demo.Get(ctx, name); err != nil {
				t.Errorf("the volume is not in the demo project: %v", err)
			}
			if err := b.Remove(ctx, name); err != nil {
				t.Fatal(err)
			}
		})
	}
	bad := byID
	bad.ApplicationCredentialSecret = "wrong"
	b := newCloudBackend(t, bad, &fakeInitiator{name: "iqn.2024-01.test:host-a"})
	if err := b.Check(ctx); err == nil || !strings.Contains(err.Error(), "application credential") || !strings.Contains(err.Error(), "401") {
		t.Errorf("Check with a wrong secret = %v", err)
	}
}
