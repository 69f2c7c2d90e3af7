package main

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/blockvol/blockvol/plugin"
)

// snapshotPlugin answers blockvol's own calls with canned answers and
// records the requests.
type snapshotPlugin struct {
	mu   sync.Mutex
	reqs []string
}

func (p *snapshotPlugin) serve(t *testing.T) string {
	sock := filepath.Join(t.TempDir(), "snap.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	answer := func(path, body string) {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			req, _ := io.ReadAll(r.Body)
			p.mu.Lock()
			p.reqs = append(p.reqs, path+" "+string(req))
			p.mu.Unlock()
			io.WriteString(w, body)
		})
	}
	answer(plugin.SnapshotCreatePath, `{"Snapshot":{"Name":"s1","Volume":"db","Backend":"local","SizeBytes":1073741824}}`)
	answer(plugin.SnapshotListPath, `{"Snapshots":[{"Name":"s1","Volume":"db","Backend":"local","SizeBytes":1073741824,"CreatedAt":"2026-12-01T05:00:00Z","Status":{"copy":"reflink"}}]}`)
	answer(plugin.SnapshotRemovePath, `{"Err":"snapshot \"s9\" does not exist"}`)
	answer(plugin.ResizePath, `{}`)
	go func() { _ = http.Serve(l, mux) }()
	t.Cleanup(func() { l.Close() })
	return sock
}

func TestSnapshotAndResizeCLI(t *testing.T) {
	p := &snapshotPlugin{}
	sock := p.serve(t)
	for _, tc := range []struct {
		args     []string
		code     int
		out, err string
		req      string
	}{
		{[]string{"volume", "snapshot", "create", "db", "s1"}, 0, "s1\n", "", `/BlockVol.SnapshotCreate {"Volume":"db","Name":"s1"}`},
		{[]string{"volume", "snapshot", "ls"}, 0, "SNAPSHOT  VOLUME  SIZE   CREATED               COPY\ns1        db      1 GiB  2026-12-01T05:00:00Z  reflink\n", "", `/BlockVol.SnapshotList {"Volume":""}`},
		{[]string{"volume", "snapshot", "ls", "db"}, 0, "", "", `/BlockVol.SnapshotList {"Volume":"db"}`},
		{[]string{"volume", "snapshot", "rm", "s9"}, 1, "", "snapshot \"s9\" does not exist\n", `/BlockVol.SnapshotRemove {"Name":"s9"}`},
		{[]string{"volume", "resize", "db", "20G"}, 0, "db\n", "", `/BlockVol.Resize {"Name":"db","Size":"20G"}`},
		{[]string{"volume", "resize", "db"}, 2, "", "blockvol volume resize: expected 2 argument(s), got 1 (db)\n", ""},
		{[]string{"volume", "snapshot", "create", "db"}, 2, "", "blockvol volume snapshot create: expected 2 argument(s), got 1 (db)\n", ""},
		{[]string{"volume", "snapshot", "frob"}, 2, "", "blockvol volume: unknown command \"snapshot frob\"\n", ""},
	} {
		p.mu.Lock()
		p.reqs = nil
		p.mu.Unlock()
		code, out, errText := cli(t, append(tc.args, "--socket", sock)...)
		name := strings.Join(tc.args, " ")
		if code != tc.code || (tc.out != "" && out != tc.out) || !strings.HasPrefix(errText, tc.err) || (tc.err == "" && errText != "") {
			t.Errorf("blockvol %s: exit %d, stdout %q, stderr %q; want %d, %q, %q", name, code, out, errText, tc.code, tc.out, tc.err)
		}
		p.mu.Lock()
		got := strings.Join(p.reqs, "\n")
		p.mu.Unlock()
		if got != tc.req {
			t.Errorf("blockvol %s sent %q; want %q", name, got, tc.req)
		}
	}
	// --json for scripts.
	_, out, _ := cli(t, "volume", "snapshot", "ls", "--json", "--socket", sock)
	var snaps []plugin.Snapshot
	if err := json.Unmarshal([]byte(out), &snaps); err != nil || len(snaps) != 1 || snaps[0].Status["copy"] != "reflink" {
		t.Fatalf("ls --json = %q (%v)", out, err)
	}
}
