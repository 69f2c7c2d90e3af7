package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

// socketClient speaks the plugin protocol over a unix socket, as dockerd
// and dvdcli do.
type socketClient struct {
	t    *testing.T
	http *http.Client
}

// serveOnSocket serves the driver's real handler on a unix socket in a
// temporary directory.
func serveOnSocket(t *testing.T, d *Driver) *socketClient {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "p.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = http.Serve(l, NewHandler(d)) }()
	t.Cleanup(func() { l.Close() })
	return &socketClient{t: t, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}}
}

// call POSTs body (raw JSON) to endpoint and returns the status and the
// decoded JSON object.
func (c *socketClient) call(endpoint, body string) (int, map[string]any) {
	c.t.Helper()
	resp, err := c.http.Post("http://plugin/"+endpoint, "application/vnd.docker.plugins.v1.2+json", strings.NewReader(body))
	if err != nil {
		c.t.Fatalf("%s: %v", endpoint, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	out := map[string]any{}
	if err := json.NewDecoder(bytes.NewReader(raw)).Decode(&out); err != nil {
		c.t.Fatalf("%s: response %q is not JSON: %v", endpoint, raw, err)
	}
	return resp.StatusCode, out
}

func (c *socketClient) ok(endpoint, body string) map[string]any {
	c.t.Helper()
	code, out := c.call(endpoint, body)
	if code != http.StatusOK || out["Err"] != nil {
		c.t.Fatalf("%s %s: status %d, %v", endpoint, body, code, out)
	}
	return out
}

func (c *socketClient) fails(endpoint, body, wantErr string) {
	c.t.Helper()
	_, out := c.call(endpoint, body)
	msg, _ := out["Err"].(string)
	if !strings.Contains(msg, wantErr) {
		c.t.Fatalf("%s %s: Err %q, want it to contain %q", endpoint, body, msg, wantErr)
	}
}

func TestProtocolActivateAndCapabilities(t *testing.T) {
	c := serveOnSocket(t, newHarness(t).d)
	out := c.ok("Plugin.Activate", "")
	if impl, _ := out["Implements"].([]any); len(impl) != 1 || impl[0] != "VolumeDriver" {
		t.Fatalf("Activate = %v", out)
	}
	out = c.ok("VolumeDriver.Capabilities", "{}")
	if caps, _ := out["Capabilities"].(map[string]any); caps["Scope"] != "local" {
		t.Fatalf("Capabilities = %v", out)
	}
}

// The exact sequence of `dvdcli mount --volumeopts=size=5
// --volumeopts=newfstype=xfs` and `dvdcli unmount`, twice mounted as the
// Mesos isolator does for two containers, once unmounted.
func TestProtocolDVDCLISequence(t *testing.T) {
	h := newHarness(t)
	c := serveOnSocket(t, h.d)
	c.ok("Plugin.Activate", "")
	c.fails("VolumeDriver.Get", `{"Name":"mesos1"}`, `volume "mesos1" does not exist`)
	c.ok("VolumeDriver.Create", `{"Name":"mesos1","Opts":{"size":"5","newfstype":"xfs"}}`)
	out := c.ok("VolumeDriver.Mount", `{"Name":"mesos1"}`)
	if out["Mountpoint"] != "/mnt/bv/mesos1" {
		t.Fatalf("Mount = %v", out)
	}
	// Second container on the agent: dvdcli mount again (Get finds it).
	c.ok("Plugin.Activate", "")
	c.ok("VolumeDriver.Get", `{"Name":"mesos1"}`)
	if out := c.ok("VolumeDriver.Mount", `{"Name":"mesos1"}`); out["Mountpoint"] != "/mnt/bv/mesos1" {
		t.Fatalf("second Mount = %v", out)
	}
	got := c.ok("VolumeDriver.Get", `{"Name":"mesos1"}`)
	v := got["Volume"].(map[string]any)
	st := v["Status"].(map[string]any)
	if v["Mountpoint"] != "/mnt/bv/mesos1" || st["fstype"] != "xfs" || st["size"] != "5 GiB" {
		t.Fatalf("Get = %v", got)
	}
	// The last container is cleaned up: one dvdcli unmount.
	c.ok("VolumeDriver.Get", `{"Name":"mesos1"}`)
	c.ok("VolumeDriver.Unmount", `{"Name":"mesos1"}`)
	if len(h.fs.mounted()) != 0 || len(h.be.attached) != 0 {
		t.Fatalf("after dvdcli unmount: mounted %v attached %v", h.fs.mounted(), h.be.attached)
	}
	if out := c.ok("VolumeDriver.Path", `{"Name":"mesos1"}`); out["Mountpoint"] != "" {
		t.Fatalf("Path after unmount = %v", out)
	}
}

func TestProtocolDockerSequence(t *testing.T) {
	h := newHarness(t)
	c := serveOnSocket(t, h.d)
	if out := c.ok("VolumeDriver.List", `{}`); out["Volumes"] == nil {
		t.Fatalf("List of no volumes = %v; want an empty list, not null", out)
	}
	// docker volume create without -o sends "Opts": null.
	c.ok("VolumeDriver.Create", `{"Name":"d1","Opts":null}`)
	out := c.ok("VolumeDriver.List", `{}`)
	vols := out["Volumes"].([]any)
	if len(vols) != 1 || vols[0].(map[string]any)["Name"] != "d1" {
		t.Fatalf("List = %v", out)
	}
	c.ok("VolumeDriver.Mount", `{"Name":"d1","ID":"`+id1+`"}`)
	c.ok("VolumeDriver.Mount", `{"Name":"d1","ID":"`+id2+`"}`)
	c.fails("VolumeDriver.Remove", `{"Name":"d1"}`, `volume "d1" is in use by 2 mount(s) on this host`)
	c.ok("VolumeDriver.Unmount", `{"Name":"d1","ID":"`+id1+`"}`)
	if out := c.ok("VolumeDriver.Path", `{"Name":"d1"}`); out["Mountpoint"] != "/mnt/bv/d1" {
		t.Fatalf("Path while the second container runs = %v", out)
	}
	c.ok("VolumeDriver.Unmount", `{"Name":"d1","ID":"`+id2+`"}`)
	c.ok("VolumeDriver.Remove", `{"Name":"d1"}`)
	c.fails("VolumeDriver.Create", `{"Name":"../etc","Opts":{}}`, `volume name "../etc" is not valid`)
	c.fails("VolumeDriver.Create", `{"Name":"x","Opts":{"size":"0"}}`, `option size "0" must be a positive whole number of GiB`)
	c.fails("VolumeDriver.Mount", `{"Name":"nosuch","ID":"`+id1+`"}`, `volume "nosuch" does not exist`)
}

// A body that is not exactly one JSON object, or is larger than 1 MiB, is
// refused before the driver sees it; white space around it is fine.
func TestProtocolRefusesBodiesThatAreNotOneObject(t *testing.T) {
	h := newHarness(t)
	c := serveOnSocket(t, h.d)
	for body, want := range map[string]string{
		`{"Name":"x"} xyz`:          "the request body has bytes after its JSON object; send exactly one object",
		`{"Name":"x"}{"Name":"y"}`:  "the request body has bytes after its JSON object",
		`{"Name":"x"`:               "the request body is not valid JSON",
		`["x"]`:                     "the request body must be one JSON object",
		`null`:                      "the request body must be one JSON object",
		``:                          "the request body must be one JSON object",
		`{"Name":7}`:                "the request body does not fit the call",
		`{"Name":"x","Opts":"big"}`: "the request body does not fit the call",
	} {
		code, out := c.call("VolumeDriver.Create", body)
		if msg, _ := out["Err"].(string); code != http.StatusBadRequest || !strings.HasPrefix(msg, want) {
			t.Errorf("Create %q: %d %v; want 400 and %q", body, code, out, want)
		}
	}
	big := `{"Name":"x","Opts":{"volumetype":"` + strings.Repeat("a", MaxRequestBytes) + `"}}`
	if code, out := c.call("VolumeDriver.Create", big); code != http.StatusRequestEntityTooLarge || out["Err"] != "the request body is larger than 1048576 bytes" {
		t.Errorf("Create of %d bytes: %d %v", len(big), code, out)
	}
	if calls := h.be.callLog(); len(calls) != 0 {
		t.Fatalf("refused requests reached the backend: %v", calls)
	}
	c.ok("VolumeDriver.Create", " {\"Name\":\"x\"}\n")
	c.ok("VolumeDriver.List", "")
	c.ok("VolumeDriver.List", "{}\n")
	if code, _ := c.call("VolumeDriver.List", "{} {}"); code != http.StatusBadRequest {
		t.Errorf("List with two objects: %d, want 400", code)
	}
}
