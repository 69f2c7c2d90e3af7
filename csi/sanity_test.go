package csi_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
)

// TestSanity runs the official csi-sanity suite against the CSI door over
// the real loop backend, mkfs and mounts. What it skips is listed in
// docs/csi.md: each skip is a capability blockvol does not advertise.
func TestSanity(t *testing.T) {
	h := newHost(t)
	cfg := sanity.NewTestConfig()
	cfg.Address = h.endpoint()
	cfg.TargetPath = filepath.Join(h.root, "bvcsi-target")
	cfg.StagingPath = filepath.Join(h.root, "bvcsi-staging")
	cfg.TestVolumeSize = 64 << 20
	cfg.IdempotentCount = 3
	cfg.TestNodeVolumeAttachLimit = true
	if os.Getenv("BVCSI_SANITY_BLOCK") == "1" {
		cfg.TestVolumeAccessType = "block"
	}
	sanity.Test(t, cfg)
}

// TestSanityBlock runs the suite again with raw block volumes (access type
// block). Ginkgo runs one suite per process, so it runs in a child.
func TestSanityBlock(t *testing.T) {
	if os.Getenv("BVCSI_SANITY_BLOCK") == "1" {
		t.Skip("this is the child")
	}
	requireRootTools(t)
	cmd := exec.Command(os.Args[0], "-test.run", "^TestSanity$", "-test.count=1")
	cmd.Env = append(os.Environ(), "BVCSI_SANITY_BLOCK=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("csi-sanity with block volumes: %v\n%s", err, out)
	}
	t.Logf("%s", lastLines(out, 4))
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
