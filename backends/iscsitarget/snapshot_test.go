package iscsitarget

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/state"
)

// snapScanCall is the helper's snapshot scan answering items.
func snapScanCall(items ...item) hostexec.Call {
	var out strings.Builder
	for _, it := range items {
		fmt.Fprintf(&out, "%s\x00%s\x00%s\x00%s\x00", it.kind, it.dir, it.name, it.content)
	}
	return hostexec.Call{Argv: helperArgv("snapscan", poolDir+"/"+snapSubdir, ssdDir+"/"+snapSubdir), Stdout: out.String()}
}

// A damaged snapshot record is set aside on the target host (renamed by
// the helper to state.QuarantineName, one ERROR line) the first time it is
// read; the snapshot stays listed with its damage, says where the record
// went, its name is not taken again, and the record is not set aside twice.
func TestDamagedSnapshotRecordIsSetAside(t *testing.T) {
	sdir := poolDir + "/" + snapSubdir
	good, err := json.Marshal(snapRecord{Name: "good", Volume: "v1", SizeBytes: gib, CreatedAt: t0})
	if err != nil {
		t.Fatal(err)
	}
	goodItems := []item{{"record", sdir, "good", string(good) + "\n"}, imgItem(sdir, "good")}
	to := state.QuarantineName(sdir+"/bad.json", t0)
	aside := item{"aside", sdir, "bad", to[len(sdir)+1:]}
	e := newEnv(t, nil,
		snapScanCall(append([]item{{"record", sdir, "bad", "{garbled"}, imgItem(sdir, "bad")}, goodItems...)...),
		helperCall("aside", sdir+"/bad.json", to),
		snapScanCall(append([]item{aside, imgItem(sdir, "bad")}, goodItems...)...),
		lockCall("snapshot", "v1"),
		scanCall("v1", vol(poolDir, rec("v1"))),
		snapScanCall(aside, imgItem(sdir, "bad")),
	)
	var logs bytes.Buffer
	e.b.log = slog.New(slog.NewTextHandler(&logs, nil))
	for i := range 2 {
		list, err := e.b.ListSnapshots(ctx, "")
		if err != nil || len(list) != 2 || list[0].Name != "bad" || list[1].Name != "good" || list[1].Volume != "v1" {
			t.Fatalf("list %d: ListSnapshots = %+v, %v", i, list, err)
		}
		if d, _ := list[0].Status["damage"].(string); !strings.Contains(d, "damaged") || !strings.Contains(d, "set aside as "+to) {
			t.Fatalf("list %d: damage %q does not say where the record went", i, d)
		}
	}
	if n := strings.Count(logs.String(), "level=ERROR"); n != 1 || !strings.Contains(logs.String(), "set_aside_as="+to) {
		t.Fatalf("%d ERROR lines; want one naming %s:\n%s", n, to, logs.String())
	}
	if _, err := e.b.CreateSnapshot(ctx, "v1", "bad"); !errors.Is(err, sentinel.ErrExists) {
		t.Fatalf("a snapshot over the damaged one = %v", err)
	}
}
