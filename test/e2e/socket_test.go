package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// pluginCall POSTs a raw JSON body to one endpoint of a running plugin, as
// dvdcli does, and returns the decoded answer.
func pluginCall(t testing.TB, p *Plugin, endpoint, body string) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://plugin/"+endpoint, bytes.NewBufferString(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := unixHTTPClient(p.SocketPath).Do(req)
	if err != nil {
		t.Fatalf("%s: %v", endpoint, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	out := map[string]any{}
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s: answer %q is not JSON: %v", endpoint, raw, err)
	}
	return out
}

func pluginOK(t testing.TB, p *Plugin, endpoint, body string) map[string]any {
	t.Helper()
	out := pluginCall(t, p, endpoint, body)
	if e, ok := out["Err"]; ok && e != "" {
		t.Fatalf("%s %s: %v", endpoint, body, e)
	}
	return out
}

// privatePlugin starts a plugin on a socket dockerd never scans, for tests
// that talk to the socket directly (dockerd stalls on plugin sockets that
// disappear while it knows them).
func privatePlugin(t testing.TB, size string) *Plugin {
	t.Helper()
	skipUnlessSetUp(t)
	name := fmt.Sprintf("%s%s-sock-%d", runPrefix, env.runID, time.Now().UnixNano()%1_000_000)
	dir := filepath.Join(env.root, "private", name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := startPlugin(t, PluginConfig{Name: name, Socket: filepath.Join(dir, "p.sock"), DefaultSize: size})
	t.Cleanup(func() { p.Stop() })
	return p
}

// The exact calls of `dvdcli mount --volumedriver=D --volumename=n
// --volumeopts=size=... --volumeopts=newfstype=xfs` for two containers on
// one Mesos agent, then the one `dvdcli unmount` the isolator sends when the
// last of them is gone — against the real binary and real loop devices.
func TestDVDCLISequenceOnRealPlugin(t *testing.T) {
	p := privatePlugin(t, "1G")
	pluginOK(t, p, "Plugin.Activate", "")
	if out := pluginCall(t, p, "VolumeDriver.Get", `{"Name":"mesos1"}`); out["Err"] != `volume "mesos1" does not exist` {
		t.Fatalf("Get of a new volume = %v", out)
	}
	pluginOK(t, p, "VolumeDriver.Create", `{"Name":"mesos1","Opts":{"size":"512M","newfstype":"xfs"}}`)
	mp := pluginOK(t, p, "VolumeDriver.Mount", `{"Name":"mesos1"}`)["Mountpoint"].(string)
	if err := os.WriteFile(filepath.Join(mp, "task1"), []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Second container on the agent: dvdcli mount again, no options.
	pluginOK(t, p, "Plugin.Activate", "")
	pluginOK(t, p, "VolumeDriver.Get", `{"Name":"mesos1"}`)
	if mp2 := pluginOK(t, p, "VolumeDriver.Mount", `{"Name":"mesos1"}`)["Mountpoint"]; mp2 != mp {
		t.Fatalf("second Mount = %v, want %s", mp2, mp)
	}
	mounts, err := mountsUnder(p.EffectiveMountDir())
	if err != nil || len(mounts) != 1 || mounts[0].FSType != "xfs" {
		t.Fatalf("mounts under the plugin's mount dir: %+v %v; want one xfs", mounts, err)
	}
	// The isolator's single unmount releases the ID-less use.
	pluginOK(t, p, "Plugin.Activate", "")
	pluginOK(t, p, "VolumeDriver.Get", `{"Name":"mesos1"}`)
	pluginOK(t, p, "VolumeDriver.Unmount", `{"Name":"mesos1"}`)
	requireReleased(t, p)
	// The data and the stored options survive: the next task's mount needs
	// no options.
	mp = pluginOK(t, p, "VolumeDriver.Mount", `{"Name":"mesos1"}`)["Mountpoint"].(string)
	if b, err := os.ReadFile(filepath.Join(mp, "task1")); err != nil || string(b) != "data" {
		t.Fatalf("data after remount: %q %v", b, err)
	}
	st := pluginOK(t, p, "VolumeDriver.Get", `{"Name":"mesos1"}`)["Volume"].(map[string]any)["Status"].(map[string]any)
	if st["fstype"] != "xfs" || st["size"] != "512 MiB" {
		t.Fatalf("stored options lost: %v", st)
	}
	pluginOK(t, p, "VolumeDriver.Unmount", `{"Name":"mesos1"}`)
	pluginOK(t, p, "VolumeDriver.Remove", `{"Name":"mesos1"}`)
	requireReleased(t, p)
}
