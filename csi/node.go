package csi

import (
	"context"
	"errors"
	"path/filepath"
	"syscall"

	"github.com/blockvol/blockvol/internal/quote"
	"github.com/blockvol/blockvol/volumes"
	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// blockFileName is the file in a block volume's staging directory on which
// its device node is bind-mounted.
const blockFileName = "blockvol-device"

func blockFile(staging string) string { return filepath.Join(staging, blockFileName) }

// NodeGetCapabilities: staging, and volume stats.
func (s *Server) NodeGetCapabilities(context.Context, *csipb.NodeGetCapabilitiesRequest) (*csipb.NodeGetCapabilitiesResponse, error) {
	var caps []*csipb.NodeServiceCapability
	for _, t := range []csipb.NodeServiceCapability_RPC_Type{
		csipb.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csipb.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csipb.NodeServiceCapability_RPC_EXPAND_VOLUME,
	} {
		caps = append(caps, &csipb.NodeServiceCapability{Type: &csipb.NodeServiceCapability_Rpc{Rpc: &csipb.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csipb.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

// NodeGetInfo: the node id is this host's UUID; the topology, the zones of
// the backends that have them.
func (s *Server) NodeGetInfo(context.Context, *csipb.NodeGetInfoRequest) (*csipb.NodeGetInfoResponse, error) {
	return &csipb.NodeGetInfoResponse{NodeId: s.cfg.NodeID, AccessibleTopology: s.nodeTopology()}, nil
}

// volumeAt checks a node request's volume_id and its absolute path field
// what, and returns the path cleaned (absPath).
func volumeAt(id, what, path string) (string, error) {
	if id == "" {
		return "", invalid("volume_id is missing")
	}
	return absPath(what, path)
}

// claimAt is volumeAt and usable: the first checks of the node requests
// that claim a volume (stage, publish).
func claimAt(id, what, path string, vc *csipb.VolumeCapability) (string, error) {
	p, err := volumeAt(id, what, path)
	if err != nil {
		return "", err
	}
	return p, usable(vc)
}

// usable checks a request's volume_capability: present, and one blockvol
// gives.
func usable(vc *csipb.VolumeCapability) error {
	if vc == nil {
		return invalid("volume_capability is missing")
	}
	if why := unsupported(vc); why != "" {
		return invalid("%s", why)
	}
	return nil
}

// absPath checks that the request's field what holds an absolute path p
// and returns p cleaned; a missing or relative one is InvalidArgument.
func absPath(what, p string) (string, error) {
	if p == "" {
		return "", invalid("%s is missing", what)
	}
	if !filepath.IsAbs(p) {
		return "", invalid("%s %q is not absolute", what, quote.Prefix(p))
	}
	return filepath.Clean(p), nil
}

// NodeStageVolume brings the volume up on this host (attach; make the
// filesystem on a blank device only; mount once at the core's mountpoint)
// under the claim csi-stage:<staging path>, and bind-mounts it at the
// staging path (a raw block volume: its device on a file in it).
func (s *Server) NodeStageVolume(ctx context.Context, req *csipb.NodeStageVolumeRequest) (*csipb.NodeStageVolumeResponse, error) {
	id, vc := req.GetVolumeId(), req.GetVolumeCapability()
	staging, err := claimAt(id, "staging_target_path", req.GetStagingTargetPath(), vc)
	if err != nil {
		return nil, err
	}
	block := vc.GetBlock() != nil
	if fs := vc.GetMount().GetFsType(); fs != "" {
		info, err := s.core.Get(ctx, id)
		if err != nil {
			return nil, toStatus(err)
		}
		if info.OptionsKnown && fs != info.Options.FSType {
			return nil, status.Errorf(codes.FailedPrecondition, "volume %s is %s, not %s (its fstype is chosen when it is created)", quote.Short(id), info.Options.FSType, quote.Short(fs))
		}
	}
	cl := volumes.Claim{
		Name: id, User: stagePrefix + staging, Block: block,
		Preempt: req.GetPublishContext()["preempt"] == "true",
		Then: func(ctx context.Context, at string) error {
			target := staging
			if block {
				target = blockFile(staging)
			}
			return s.bind(ctx, at, target, false)
		},
	}
	if _, err := s.core.Claim(ctx, cl); err != nil {
		return nil, toStatus(err)
	}
	return &csipb.NodeStageVolumeResponse{}, nil
}

// bind is Mounts.Bind with its "mounted differently" as ALREADY_EXISTS.
func (s *Server) bind(ctx context.Context, source, target string, readOnly bool) error {
	err := s.cfg.Mounts.Bind(ctx, source, target, readOnly)
	if err != nil && s.cfg.ErrMountedDifferently != nil && errors.Is(err, s.cfg.ErrMountedDifferently) {
		return status.Error(codes.AlreadyExists, err.Error())
	}
	return err
}

// NodeUnstageVolume unmounts the staging path and drops its claim; the
// last claim of the volume on this host (CSI's or Docker's) unmounts and
// detaches it.
func (s *Server) NodeUnstageVolume(ctx context.Context, req *csipb.NodeUnstageVolumeRequest) (*csipb.NodeUnstageVolumeResponse, error) {
	err := s.unclaim(ctx, req.GetVolumeId(), "staging_target_path", req.GetStagingTargetPath(), stagePrefix, func(ctx context.Context, staging string) error {
		if err := s.cfg.Mounts.Unbind(ctx, blockFile(staging)); err != nil {
			return err
		}
		// The staging directory is the CO's: unmount it, keep it.
		return s.cfg.Mounts.Unmount(ctx, staging)
	})
	if err != nil {
		return nil, err
	}
	return &csipb.NodeUnstageVolumeResponse{}, nil
}

// NodePublishVolume bind-mounts the staged volume at the target path
// (read-only when asked) under the claim csi-publish:<target path>.
func (s *Server) NodePublishVolume(ctx context.Context, req *csipb.NodePublishVolumeRequest) (*csipb.NodePublishVolumeResponse, error) {
	id, vc := req.GetVolumeId(), req.GetVolumeCapability()
	target, err := claimAt(id, "target_path", req.GetTargetPath(), vc)
	if err != nil {
		return nil, err
	}
	staging, err := absPath("staging_target_path", req.GetStagingTargetPath())
	if err != nil {
		return nil, err
	}
	block := vc.GetBlock() != nil
	if !s.core.Holds(id, stagePrefix+staging) {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %q is not staged at %s; NodeStageVolume first", quote.Prefix(id), quote.Prefix(staging))
	}
	readOnly := req.GetReadonly() || vc.GetAccessMode().GetMode() == csipb.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
	cl := volumes.Claim{
		Name: id, User: publishPrefix + target, Block: block,
		Then: func(ctx context.Context, at string) error {
			source := staging
			if block {
				source = blockFile(staging)
			}
			if ok, err := s.cfg.Mounts.IsMountPoint(source); err != nil || !ok {
				return status.Errorf(codes.FailedPrecondition, "volume %q is not staged at %s (%v); NodeStageVolume first", quote.Prefix(id), quote.Prefix(staging), err)
			}
			return s.bind(ctx, source, target, readOnly)
		},
	}
	if _, err := s.core.Claim(ctx, cl); err != nil {
		return nil, toStatus(err)
	}
	return &csipb.NodePublishVolumeResponse{}, nil
}

// NodeUnpublishVolume unmounts and removes the target path and drops its
// claim.
func (s *Server) NodeUnpublishVolume(ctx context.Context, req *csipb.NodeUnpublishVolumeRequest) (*csipb.NodeUnpublishVolumeResponse, error) {
	err := s.unclaim(ctx, req.GetVolumeId(), "target_path", req.GetTargetPath(), publishPrefix, func(ctx context.Context, target string) error {
		return s.cfg.Mounts.Unbind(ctx, target)
	})
	if err != nil {
		return nil, err
	}
	return &csipb.NodeUnpublishVolumeResponse{}, nil
}

// unclaim is the body of NodeUnstageVolume and NodeUnpublishVolume: it
// checks id and the absolute path in field what (volumeAt), and drops the
// claim prefix+<path cleaned> of the volume, with release(ctx, cleaned
// path) run as core.Unclaim runs its release. Errors are gRPC statuses.
func (s *Server) unclaim(ctx context.Context, id, what, path, prefix string, release func(ctx context.Context, path string) error) error {
	path, err := volumeAt(id, what, path)
	if err != nil {
		return err
	}
	err = s.core.Unclaim(ctx, id, prefix+path, func(ctx context.Context) error {
		return release(ctx, path)
	})
	if err != nil {
		return toStatus(err)
	}
	return nil
}

// heldPath checks that volume id is staged or published on this node at
// path and returns path cleaned; a missing id or path is InvalidArgument,
// a path CSI did not stage or publish id at is NotFound.
func (s *Server) heldPath(id, path string) (string, error) {
	if id == "" {
		return "", invalid("volume_id is missing")
	}
	if path == "" {
		return "", invalid("volume_path is missing")
	}
	path = filepath.Clean(path)
	if !s.core.Holds(id, publishPrefix+path) && !s.core.Holds(id, stagePrefix+path) {
		return "", status.Errorf(codes.NotFound, "volume %q is not staged or published at %s on this node", quote.Prefix(id), quote.Prefix(path))
	}
	return path, nil
}

// NodeGetVolumeStats reports the usage of a volume at a path where CSI
// staged or published it.
func (s *Server) NodeGetVolumeStats(ctx context.Context, req *csipb.NodeGetVolumeStatsRequest) (*csipb.NodeGetVolumeStatsResponse, error) {
	id := req.GetVolumeId()
	path, err := s.heldPath(id, req.GetVolumePath())
	if err != nil {
		return nil, err
	}
	info, err := s.core.Get(ctx, id)
	if err != nil {
		return nil, toStatus(err)
	}
	if info.Local != nil && info.Local.Block {
		return &csipb.NodeGetVolumeStatsResponse{Usage: []*csipb.VolumeUsage{{Unit: csipb.VolumeUsage_BYTES, Total: info.SizeBytes}}}, nil
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return nil, status.Errorf(codes.NotFound, "volume %q at %s: %v", quote.Prefix(id), quote.Prefix(path), err)
	}
	bs := int64(st.Bsize)
	return &csipb.NodeGetVolumeStatsResponse{Usage: []*csipb.VolumeUsage{
		{Unit: csipb.VolumeUsage_BYTES, Total: int64(st.Blocks) * bs, Available: int64(st.Bavail) * bs, Used: int64(st.Blocks-st.Bfree) * bs},
		{Unit: csipb.VolumeUsage_INODES, Total: int64(st.Files), Available: int64(st.Ffree), Used: int64(st.Files - st.Ffree)},
	}}, nil
}
