package vm

import (
	"os"
	"testing"
	"time"
)

// TestVMCSISanity runs the official csi-sanity suite's Node side inside a
// VM against the real blockvol serving CSI with the iscsitarget backend
// (real kernel iSCSI logins under NodeStage). It boots a guest of its own
// (vmtest.mode=csi): the suite takes minutes under TCG, more than TestVM's
// boot deadline leaves.
func TestVMCSISanity(t *testing.T) {
	k, q := requireVM(t)
	if os.Getenv("BLOCKVOL_VM_TIMEOUT") == "" {
		t.Setenv("BLOCKVOL_VM_TIMEOUT", "15m")
	}
	start := time.Now()
	r, err := bootGuest(t, k, q, "csi")
	if err != nil {
		t.Fatal(err)
	}
	res := r.res
	t.Logf("console log: %s; test total %s", res.LogPath, time.Since(start).Round(time.Second))
	scenarios := res.Scenarios()
	if len(scenarios) == 0 {
		t.Fatalf("the guest reported no scenario (VM %s, qemu exit %d); console:\n%s", res.Status, res.ExitCode, tailLines(res.Console, 60))
	}
	for _, sc := range scenarios {
		t.Run(sc.Name, func(t *testing.T) { reportScenario(t, sc, res) })
	}
	if res.Status != Passed {
		t.Errorf("the guest reported %s (qemu exit %d)", res.Status, res.ExitCode)
	}
}
