package csi

import (
	"context"
	"errors"
	"strings"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var rwMount = &csipb.VolumeCapability{
	AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{}},
	AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}

func code(err error) codes.Code { return status.Code(err) }

func TestPickSize(t *testing.T) {
	const def = 1 << 30
	for _, tc := range []struct {
		req, lim, want int64
		code           codes.Code
	}{
		{0, 0, def, codes.OK},
		{1, 0, mib, codes.OK},
		{mib + 1, 0, 2 * mib, codes.OK},
		{0, 512 * mib, 512 * mib, codes.OK},
		{64 * mib, 64 * mib, 64 * mib, codes.OK},
		{mib + 1, mib + 100, 0, codes.OutOfRange},
		{2 * mib, mib, 0, codes.OutOfRange},
		{-1, 0, 0, codes.InvalidArgument},
	} {
		got, err := pickSize(&csipb.CapacityRange{RequiredBytes: tc.req, LimitBytes: tc.lim}, def)
		if code(err) != tc.code || (err == nil && got != tc.want) {
			t.Errorf("pickSize(%d, %d) = %d, %v; want %d, %s", tc.req, tc.lim, got, err, tc.want, tc.code)
		}
	}
}

func TestCreateVolumeParameters(t *testing.T) {
	s, be, _ := fakeHost(t)
	ctx := context.Background()
	req := &csipb.CreateVolumeRequest{Name: "db", VolumeCapabilities: []*csipb.VolumeCapability{rwMount},
		CapacityRange: &csipb.CapacityRange{RequiredBytes: 2 << 30}, Parameters: map[string]string{"fstype": "xfs", "type": "fast"}}
	res, err := s.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if v := res.Volume; v.VolumeId != "db" || v.CapacityBytes != 2<<30 || v.VolumeContext["fstype"] != "xfs" || v.VolumeContext["backend"] != "shared" {
		t.Fatalf("CreateVolume = %+v", v)
	}
	if _, err := s.CreateVolume(ctx, req); err != nil {
		t.Fatalf("a compatible repeat = %v", err)
	}
	req.Parameters["fstype"] = "ext4"
	if _, err := s.CreateVolume(ctx, req); code(err) != codes.AlreadyExists {
		t.Fatalf("a repeat with another fstype = %v; want ALREADY_EXISTS", err)
	}
	for _, bad := range []map[string]string{{"size": "5G"}, {"bogus": "1"}} {
		r := &csipb.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csipb.VolumeCapability{rwMount}, Parameters: bad}
		if _, err := s.CreateVolume(ctx, r); code(err) != codes.InvalidArgument {
			t.Errorf("CreateVolume with parameters %v = %v; want INVALID_ARGUMENT", bad, err)
		}
	}
	multi := &csipb.VolumeCapability{AccessType: rwMount.AccessType, AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}}
	if _, err := s.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: "m", VolumeCapabilities: []*csipb.VolumeCapability{multi}}); code(err) != codes.InvalidArgument {
		t.Errorf("CreateVolume MULTI_NODE_MULTI_WRITER = %v; want INVALID_ARGUMENT", err)
	}
	if len(be.vols) != 1 {
		t.Fatalf("refused creates reached the backend: %v", be.vols)
	}
}

// TestPublishFencing: one node at a time; a volume created with
// preempt=true is taken over, and the new node's NodeStage attaches with
// preempt (the backend fences the old node off).
func TestPublishFencing(t *testing.T) {
	s, be, _ := fakeHost(t)
	ctx := context.Background()
	for name, params := range map[string]map[string]string{"plain": nil, "takeover": {"preempt": "true"}} {
		if _, err := s.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csipb.VolumeCapability{rwMount}, Parameters: params}); err != nil {
			t.Fatal(err)
		}
	}
	pub := func(vol, node string, ro bool) (*csipb.ControllerPublishVolumeResponse, error) {
		return s.ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: vol, NodeId: node, VolumeCapability: rwMount, Readonly: ro})
	}
	if _, err := pub("plain", nodeB, false); err != nil {
		t.Fatal(err)
	}
	if _, err := pub("plain", nodeB, false); err != nil {
		t.Fatalf("repeated publish = %v", err)
	}
	if _, err := pub("plain", nodeB, true); code(err) != codes.AlreadyExists {
		t.Fatalf("publish read-only to a node that has it read-write = %v; want ALREADY_EXISTS", err)
	}
	if _, err := pub("plain", nodeA, false); code(err) != codes.FailedPrecondition {
		t.Fatalf("publish to A while B holds it = %v; want FAILED_PRECONDITION", err)
	}
	if _, err := pub("plain", "not-a-node", false); code(err) != codes.NotFound {
		t.Fatalf("publish to an unknown node = %v; want NOT_FOUND", err)
	}
	if _, err := s.ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{VolumeId: "plain", NodeId: nodeB}); err != nil {
		t.Fatal(err)
	}
	if _, err := pub("plain", nodeA, false); err != nil {
		t.Fatalf("publish to A after B's unpublish = %v", err)
	}

	if _, err := pub("takeover", nodeB, false); err != nil {
		t.Fatal(err)
	}
	res, err := pub("takeover", nodeA, false)
	if err != nil || res.PublishContext["preempt"] != "true" {
		t.Fatalf("takeover publish = %v, %v; want preempt in the publish context", res, err)
	}
	if _, err := s.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "takeover", StagingTargetPath: "/stage/t", VolumeCapability: rwMount, PublishContext: res.PublishContext}); err != nil {
		t.Fatal(err)
	}
	if n := len(be.preempts); n != 1 || !be.preempts[0] {
		t.Fatalf("attaches (preempt) = %v; want one with preempt", be.preempts)
	}
	if _, err := pub("takeover", nodeB, false); err != nil {
		t.Fatalf("B takes it back = %v", err)
	}
}

func TestNodeStageRefusesAnotherFSType(t *testing.T) {
	s, _, f := fakeHost(t)
	ctx := context.Background()
	if _, err := s.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: "v", VolumeCapabilities: []*csipb.VolumeCapability{rwMount}}); err != nil {
		t.Fatal(err)
	}
	xfs := &csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: "xfs"}}, AccessMode: rwMount.AccessMode}
	if _, err := s.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "v", StagingTargetPath: "/stage/v", VolumeCapability: xfs}); code(err) != codes.FailedPrecondition {
		t.Fatalf("NodeStage xfs of an ext4 volume = %v; want FAILED_PRECONDITION", err)
	}
	if len(f.mounts) != 0 {
		t.Fatalf("a refused stage mounted %v", f.mounts)
	}
	// Publishing before staging is refused too.
	if _, err := s.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: "v", StagingTargetPath: "/stage/v", TargetPath: "/pod/v", VolumeCapability: rwMount}); code(err) != codes.FailedPrecondition {
		t.Fatalf("NodePublish before NodeStage = %v; want FAILED_PRECONDITION", err)
	}
}

func TestListVolumesPaging(t *testing.T) {
	s, _, _ := fakeHost(t)
	ctx := context.Background()
	for _, n := range []string{"c", "a", "d", "b"} {
		if _, err := s.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: n, VolumeCapabilities: []*csipb.VolumeCapability{rwMount}}); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	token := ""
	for range 3 {
		res, err := s.ListVolumes(ctx, &csipb.ListVolumesRequest{MaxEntries: 3, StartingToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range res.Entries {
			got = append(got, e.Volume.VolumeId)
		}
		if token = res.NextToken; token == "" {
			break
		}
		// A volume deleted between pages shifts nothing.
		if _, err := s.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: "c"}); err != nil {
			t.Fatal(err)
		}
	}
	if want := "a b c d"; strings.Join(got, " ") != want {
		t.Fatalf("pages = %v; want %s", got, want)
	}
	if _, err := s.ListVolumes(ctx, &csipb.ListVolumesRequest{StartingToken: "bogus"}); code(err) != codes.Aborted {
		t.Fatalf("a foreign token = %v; want ABORTED", err)
	}
}

func TestTopology(t *testing.T) {
	ctx := context.Background()
	s, _, _ := fakeHost(t)
	caps, _ := s.GetPluginCapabilities(ctx, &csipb.GetPluginCapabilitiesRequest{})
	info, _ := s.NodeGetInfo(ctx, &csipb.NodeGetInfoRequest{})
	if len(caps.Capabilities) != 2 || caps.Capabilities[1].GetVolumeExpansion() == nil || info.AccessibleTopology != nil {
		t.Fatalf("without zones: capabilities %v, node topology %v; want neither topology", caps.Capabilities, info.AccessibleTopology)
	}

	s, be, _ := fakeHostInZone(t, "az1")
	caps, _ = s.GetPluginCapabilities(ctx, &csipb.GetPluginCapabilitiesRequest{})
	if len(caps.Capabilities) != 3 || caps.Capabilities[1].GetService().GetType() != csipb.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS {
		t.Fatalf("with zones: capabilities %v", caps.Capabilities)
	}
	info, _ = s.NodeGetInfo(ctx, &csipb.NodeGetInfoRequest{})
	if got := info.AccessibleTopology.GetSegments()["blockvol.csi/zone-shared"]; got != "az1" {
		t.Fatalf("node topology %v; want zone az1", info.AccessibleTopology)
	}
	req := &csipb.CreateVolumeRequest{Name: "z", VolumeCapabilities: []*csipb.VolumeCapability{rwMount},
		AccessibilityRequirements: &csipb.TopologyRequirement{
			Requisite: []*csipb.Topology{{Segments: map[string]string{"blockvol.csi/zone-shared": "az1"}}, {Segments: map[string]string{"blockvol.csi/zone-shared": "az2"}}},
			Preferred: []*csipb.Topology{{Segments: map[string]string{"blockvol.csi/zone-shared": "az2"}}},
		}}
	res, err := s.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if be.lastAZ != "az2" {
		t.Fatalf("volume created in zone %q; want the preferred az2", be.lastAZ)
	}
	if got := res.Volume.AccessibleTopology; len(got) != 1 || got[0].Segments["blockvol.csi/zone-shared"] != "az2" {
		t.Fatalf("volume topology %v; want az2", got)
	}
}

// TestFailedBindUndoesTheClaim: NodeStage whose bind mount fails leaves
// nothing: no claim, no mount, nothing attached; a retry works.
func TestFailedBindUndoesTheClaim(t *testing.T) {
	s, be, f := fakeHost(t)
	ctx := context.Background()
	if _, err := s.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: "v", VolumeCapabilities: []*csipb.VolumeCapability{rwMount}}); err != nil {
		t.Fatal(err)
	}
	f.bindErr = errors.New("permission denied")
	stage := &csipb.NodeStageVolumeRequest{VolumeId: "v", StagingTargetPath: "/stage/v", VolumeCapability: rwMount}
	if _, err := s.NodeStageVolume(ctx, stage); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("NodeStage with a failing bind = %v", err)
	}
	if len(f.mounts) != 0 || len(be.attached) != 0 || s.core.Holds("v", stagePrefix+"/stage/v") {
		t.Fatalf("a failed NodeStage left mounts %v, attached %v", f.mounts, be.attached)
	}
	if _, err := s.NodeStageVolume(ctx, stage); err != nil {
		t.Fatalf("retry = %v", err)
	}
	// A second stage path whose bind fails drops only its own claim.
	f.bindErr = errors.New("permission denied")
	if _, err := s.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "v", StagingTargetPath: "/stage/w", VolumeCapability: rwMount}); err == nil {
		t.Fatal("second NodeStage with a failing bind succeeded")
	}
	if !s.core.Holds("v", stagePrefix+"/stage/v") || s.core.Holds("v", stagePrefix+"/stage/w") || f.mounts["/mnt/bv/v"] == "" {
		t.Fatalf("after a failed second stage: mounts %v", f.mounts)
	}
}
