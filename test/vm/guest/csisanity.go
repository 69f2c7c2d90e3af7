package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/gomega"
)

// csiScenarios are the run of vmtest.mode=csi (test/vm TestVMCSISanity):
// a boot of their own, because csi-sanity takes minutes under TCG.
func csiScenarios() []scenario {
	return []scenario{{name: "csi-sanity-node-iscsitarget", timeout: 12 * time.Minute, run: csiSanityNode}}
}

// csiSocket is where the csi-sanity scenario's plugin serves CSI.
const csiSocket = "/run/vmtest/csi.sock"

// csiSanityNode runs the official csi-sanity suite's Node side against the
// real blockvol serving CSI with the iscsitarget backend: NodeStage logs in
// to tgtd with the real kernel initiator, makes the filesystem and mounts;
// NodePublish binds; NodeUnstage unmounts and logs out.
func csiSanityNode(s *S) error {
	b := targetBackend()
	dir := filepath.Join("/srv", s.name)
	err := s.Step("start blockvol with the iscsitarget backend and --csi-endpoint (csi.endpoint)", func() error {
		if err := b.setup(dir); err != nil {
			return err
		}
		cfg := pluginConfig(dir, b.name, b.tables(dir)) + fmt.Sprintf("\n[csi]\nendpoint = %q\n", "unix://"+csiSocket)
		_, err := startPlugin(s, cfg)
		return err
	})
	if err != nil {
		return err
	}
	return s.Step("csi-sanity, Node Service specs", func() error {
		cfg := sanity.NewTestConfig()
		cfg.Address = "unix://" + csiSocket
		cfg.TargetPath = filepath.Join(dir, "bvcsi-target")
		cfg.StagingPath = filepath.Join(dir, "bvcsi-staging")
		cfg.TestVolumeSize = 64 << 20
		cfg.IdempotentCount = 2
		sc := sanity.GinkgoTest(&cfg)
		defer sc.Finalize()
		gomega.RegisterFailHandler(ginkgo.Fail)
		suite, rep := ginkgo.GinkgoConfiguration()
		suite.FocusStrings = []string{"Node Service"}
		suite.Timeout = 8 * time.Minute
		rep.NoColor, rep.Succinct = true, true
		t := &ginkgoT{}
		if !ginkgo.RunSpecs(t, "csi-sanity (node) against blockvol with iscsitarget", suite, rep) || t.failed {
			return errors.New("csi-sanity reported failures (the specs above)")
		}
		return nil
	})
}

// ginkgoT is the GinkgoTestingT of a suite run outside `go test`.
type ginkgoT struct{ failed bool }

func (t *ginkgoT) Fail() { t.failed = true }
