package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// cli runs blockvol with args and returns its exit status, stdout, stderr.
func cli(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestVolumeCLI(t *testing.T) {
	drv := newFakeDriver()
	sock := serveFake(t, drv)
	ok := func(args ...string) string {
		t.Helper()
		code, out, errText := cli(t, append(args, "--socket", sock)...)
		if code != 0 || errText != "" {
			t.Fatalf("blockvol %s: exit %d, stderr %q", strings.Join(args, " "), code, errText)
		}
		return out
	}

	// create with options, flags after the name as people type them.
	if out := ok("volume", "create", "db", "-o", "size=5", "-o", "fstype=xfs"); out != "db\n" {
		t.Fatalf("create printed %q", out)
	}
	if got, want := drv.vols["db"].opts, map[string]string{"size": "5", "fstype": "xfs"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("plugin got options %v, want %v", got, want)
	}
	ok("volume", "create", "--json", "web")

	// ls: a table for people, JSON for scripts.
	ok("volume", "mount", "web")
	table := ok("volume", "ls")
	wantTable := "VOLUME  MOUNTPOINT\n" +
		"db      -\n" +
		"web     /var/lib/blockvol/mounts/web\n"
	if table != wantTable {
		t.Fatalf("ls table:\n%s\nwant:\n%s", table, wantTable)
	}
	var list []struct{ Name, Mountpoint string }
	if err := json.Unmarshal([]byte(ok("volume", "ls", "--json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "db" || list[0].Mountpoint != "" || list[1].Mountpoint != "/var/lib/blockvol/mounts/web" {
		t.Fatalf("ls --json = %+v", list)
	}

	// inspect.
	table = ok("volume", "inspect", "db")
	for _, line := range []string{
		"Name:        db\n",
		"Mountpoint:  -\n",
		"CreatedAt:   2026-11-24T12:00:00Z\n",
		"backend:     local\n",
		"fstype:      xfs\n",
		"mountopts:   noatime,discard\n",
		"mounts:      0\n",
		"size:        5G\n",
	} {
		if !strings.Contains(table, line) {
			t.Errorf("inspect table lacks %q:\n%s", line, table)
		}
	}
	var v struct {
		Name, Mountpoint, CreatedAt string
		Status                      map[string]any
	}
	if err := json.Unmarshal([]byte(ok("volume", "inspect", "--json", "web")), &v); err != nil {
		t.Fatal(err)
	}
	if v.Name != "web" || v.Mountpoint != "/var/lib/blockvol/mounts/web" || v.Status["mounts"] != 1.0 {
		t.Fatalf("inspect --json = %+v", v)
	}

	// mount and unmount carry no ID, as dvdcli's.
	if out := ok("volume", "mount", "db"); out != "/var/lib/blockvol/mounts/db\n" {
		t.Fatalf("mount printed %q", out)
	}
	var m map[string]string
	if err := json.Unmarshal([]byte(ok("volume", "mount", "--json", "db")), &m); err != nil || m["Mountpoint"] != "/var/lib/blockvol/mounts/db" {
		t.Fatalf("mount --json = %v (%v)", m, err)
	}
	if out := ok("volume", "unmount", "db"); out != "db\n" {
		t.Fatalf("unmount printed %q", out)
	}
	ok("volume", "unmount", "web")
	if out := ok("volume", "rm", "db"); out != "db\n" {
		t.Fatalf("rm printed %q", out)
	}
	want := []string{
		"create db", "create web", "get web", `mount web id=""`, "list", "list", "get db", "get web",
		`mount db id=""`, `mount db id=""`, `unmount db id=""`, `unmount web id=""`, "remove db",
	}
	if !reflect.DeepEqual(drv.calls, want) {
		t.Fatalf("plugin calls:\n%q\nwant:\n%q", drv.calls, want)
	}
}

// TestVolumeCLIErrors: the plugin's Err sentence alone on stderr, exit 1;
// usage errors exit 2.
func TestVolumeCLIErrors(t *testing.T) {
	drv := newFakeDriver()
	sock := serveFake(t, drv)
	for _, tc := range []struct {
		args       []string
		code       int
		stderr     string // exact, or a prefix when ending in "..."
		noSockFlag bool
	}{
		{args: []string{"volume", "inspect", "nope"}, code: 1, stderr: "volume \"nope\" does not exist\n"},
		{args: []string{"volume", "rm", "nope"}, code: 1, stderr: "volume \"nope\" does not exist\n"},
		{args: []string{"volume", "create", "x", "-o", "colour=blue"}, code: 1, stderr: "option \"colour\" is not known; known options: size, fstype\n"},
		{args: []string{"volume", "create", "x", "-o", "size"}, code: 1, stderr: "blockvol: option \"size\" is not key=value\n"},
		{args: []string{"volume", "inspect"}, code: 2, stderr: "blockvol volume inspect: expected 1 argument(s), got 0 ()\n"},
		{args: []string{"volume", "ls", "-o", "size=1"}, code: 2, stderr: "blockvol volume ls: -o is for create only\n"},
		{args: []string{"volume", "frob"}, code: 2, stderr: "blockvol volume: unknown command \"frob\"\n..."},
		{args: []string{"volume", "ls", "--socket", filepath.Join(t.TempDir(), "none.sock")}, code: 1, noSockFlag: true,
			stderr: "blockvol: cannot reach the plugin at ..."},
	} {
		args := tc.args
		if !tc.noSockFlag {
			args = append(args, "--socket", sock)
		}
		code, out, errText := cli(t, args...)
		match := errText == tc.stderr
		if prefix, ok := strings.CutSuffix(tc.stderr, "..."); ok {
			match = strings.HasPrefix(errText, prefix)
		}
		if code != tc.code || !match || out != "" {
			t.Errorf("blockvol %s: exit %d, stdout %q, stderr %q; want exit %d, stderr %q",
				strings.Join(tc.args, " "), code, out, errText, tc.code, tc.stderr)
		}
	}
	if len(drv.vols) != 0 {
		t.Errorf("volumes left: %v", drv.vols)
	}
}

// TestVolumeCLIFindsSocketInConfig: --config names the socket.
func TestVolumeCLIFindsSocketInConfig(t *testing.T) {
	drv := newFakeDriver()
	sock := serveFake(t, drv)
	cfg := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(cfg, []byte("socket = \""+sock+"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errText := cli(t, "volume", "--config", cfg, "create", "a")
	if code != 0 || out != "a\n" || errText != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errText)
	}
	code, _, errText = cli(t, "volume", "ls", "--config", filepath.Join(t.TempDir(), "none.toml"))
	if code != 1 || !strings.Contains(errText, "none.toml: no such file or directory") {
		t.Fatalf("an explicit missing --config: exit %d, stderr %q", code, errText)
	}
}
