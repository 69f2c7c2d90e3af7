package csi

import (
	"cmp"
	"context"
	"errors"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/blockvol/blockvol/internal/quote"
	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/volumes"
)

// Snapshots, clones and expansion over the core: a snapshot's id is its
// name, as a volume's is. A snapshot is ready when CreateSnapshot returns
// (the backend's copy is complete: a reflink or a sparse copy on loop).

// CreateSnapshot takes a snapshot of a volume; a volume staged on this
// node is frozen for the instant it is taken. A repeat for the same source
// returns the snapshot; a name taken by a snapshot of another volume is
// ALREADY_EXISTS.
func (s *Server) CreateSnapshot(ctx context.Context, req *csipb.CreateSnapshotRequest) (*csipb.CreateSnapshotResponse, error) {
	name, src := req.GetName(), req.GetSourceVolumeId()
	if err := cmp.Or(required("name", name), required("source_volume_id", src)); err != nil {
		return nil, err
	}
	if err := errors.Join(volumes.ValidateName(name), volumes.ValidateName(src)); err != nil {
		return nil, toStatus(err)
	}
	if len(req.GetParameters()) > 0 {
		return nil, invalid("snapshot parameters are not accepted")
	}
	snap, err := s.core.GetSnapshot(ctx, name)
	switch {
	case err == nil && snap.Volume == src:
		return &csipb.CreateSnapshotResponse{Snapshot: csiSnapshot(snap)}, nil
	case err == nil:
		return nil, status.Errorf(codes.AlreadyExists, "snapshot %q exists already, of volume %q", quote.Prefix(name), quote.Prefix(snap.Volume))
	case !errors.Is(err, sentinel.ErrNotFound):
		return nil, toStatus(err)
	}
	snap, err = s.core.CreateSnapshot(ctx, src, name)
	if errors.Is(err, sentinel.ErrExists) {
		return nil, status.Error(codes.AlreadyExists, err.Error())
	}
	if err != nil {
		return nil, toStatus(err)
	}
	return &csipb.CreateSnapshotResponse{Snapshot: csiSnapshot(snap)}, nil
}

// GetSnapshot describes one snapshot; NOT_FOUND when there is none.
func (s *Server) GetSnapshot(ctx context.Context, req *csipb.GetSnapshotRequest) (*csipb.GetSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if err := required("snapshot_id", id); err != nil {
		return nil, err
	}
	if volumes.ValidateName(id) != nil {
		return nil, status.Errorf(codes.NotFound, "snapshot %q does not exist", quote.Prefix(id))
	}
	snap, err := s.core.GetSnapshot(ctx, id)
	if err != nil {
		return nil, toStatus(err)
	}
	return &csipb.GetSnapshotResponse{Snapshot: csiSnapshot(snap)}, nil
}

// DeleteSnapshot removes a snapshot; a missing one is success.
func (s *Server) DeleteSnapshot(ctx context.Context, req *csipb.DeleteSnapshotRequest) (*csipb.DeleteSnapshotResponse, error) {
	if err := remove(ctx, "snapshot_id", req.GetSnapshotId(), s.core.RemoveSnapshot); err != nil {
		return nil, err
	}
	return &csipb.DeleteSnapshotResponse{}, nil
}

// ListSnapshots lists snapshots sorted by id, filtered by snapshot_id or
// source_volume_id, max_entries at a time (tokens as ListVolumes').
func (s *Server) ListSnapshots(ctx context.Context, req *csipb.ListSnapshotsRequest) (*csipb.ListSnapshotsResponse, error) {
	start, err := pageStart(req.GetMaxEntries(), req.GetStartingToken())
	if err != nil {
		return nil, err
	}
	var snaps []volumes.SnapshotInfo
	switch id, src := req.GetSnapshotId(), req.GetSourceVolumeId(); {
	case id != "":
		if volumes.ValidateName(id) != nil {
			return &csipb.ListSnapshotsResponse{}, nil
		}
		snap, err := s.core.GetSnapshot(ctx, id)
		if errors.Is(err, sentinel.ErrNotFound) || err == nil && src != "" && snap.Volume != src {
			return &csipb.ListSnapshotsResponse{}, nil
		}
		if err != nil {
			return nil, toStatus(err)
		}
		snaps = []volumes.SnapshotInfo{snap}
	default:
		if src != "" && volumes.ValidateName(src) != nil {
			return &csipb.ListSnapshotsResponse{}, nil
		}
		if snaps, err = s.core.Snapshots(ctx, src); err != nil {
			return nil, toStatus(err)
		}
	}
	snaps, next := page(snaps, func(v volumes.SnapshotInfo) string { return v.Name }, start, req.GetMaxEntries())
	out := &csipb.ListSnapshotsResponse{NextToken: next}
	for _, snap := range snaps {
		out.Entries = append(out.Entries, &csipb.ListSnapshotsResponse_Entry{Snapshot: csiSnapshot(snap)})
	}
	return out, nil
}

func csiSnapshot(s volumes.SnapshotInfo) *csipb.Snapshot {
	return &csipb.Snapshot{
		SnapshotId:     s.Name,
		SourceVolumeId: s.Volume,
		SizeBytes:      s.SizeBytes,
		CreationTime:   timestamppb.New(s.CreatedAt),
		ReadyToUse:     true,
	}
}

// contentSource turns CreateVolume's content source into the core's
// option from, "" for none.
func contentSource(src *csipb.VolumeContentSource) (string, error) {
	if src == nil {
		return "", nil
	}
	var id string
	switch {
	case src.GetSnapshot() != nil:
		id = src.GetSnapshot().GetSnapshotId()
	case src.GetVolume() != nil:
		id = src.GetVolume().GetVolumeId()
	default:
		return "", invalid("the volume content source names neither a snapshot nor a volume")
	}
	if id == "" {
		return "", invalid("the volume content source has an empty id")
	}
	if volumes.ValidateName(id) != nil {
		return "", status.Errorf(codes.NotFound, "content source %q does not exist", quote.Prefix(id))
	}
	return id, nil
}

// checkSource makes sure the content source of a CreateVolume exists as
// the kind it names (NOT_FOUND otherwise): the core's option from takes a
// snapshot first, then a volume.
func (s *Server) checkSource(ctx context.Context, src *csipb.VolumeContentSource) error {
	switch {
	case src.GetSnapshot() != nil:
		_, err := s.core.GetSnapshot(ctx, src.GetSnapshot().GetSnapshotId())
		return toStatus(err)
	case src.GetVolume() != nil:
		id := src.GetVolume().GetVolumeId()
		if _, err := s.core.GetSnapshot(ctx, id); err == nil {
			return status.Errorf(codes.InvalidArgument, "volume %q shares its name with a snapshot; clone the snapshot or rename one", quote.Prefix(id))
		}
		_, err := s.core.Get(ctx, id)
		return toStatus(err)
	}
	return nil
}

// ControllerExpandVolume grows a volume to the capacity range's required
// bytes (rounded up to MiB). The core grows a filesystem mounted on this
// node at once, and one not mounted at its next mount, so the node needs
// no step of its own.
func (s *Server) ControllerExpandVolume(ctx context.Context, req *csipb.ControllerExpandVolumeRequest) (*csipb.ControllerExpandVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, invalid("volume_id is missing")
	}
	if req.GetCapacityRange() == nil {
		return nil, invalid("capacity_range is missing")
	}
	size, err := s.expand(ctx, id, req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	return &csipb.ControllerExpandVolumeResponse{CapacityBytes: size, NodeExpansionRequired: false}, nil
}

// NodeExpandVolume grows the filesystem of a volume staged or published
// at volume_path to its device (and the volume first, when the capacity
// range asks for more).
func (s *Server) NodeExpandVolume(ctx context.Context, req *csipb.NodeExpandVolumeRequest) (*csipb.NodeExpandVolumeResponse, error) {
	id := req.GetVolumeId()
	if _, err := s.heldPath(id, req.GetVolumePath()); err != nil {
		return nil, err
	}
	size, err := s.expand(ctx, id, req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	return &csipb.NodeExpandVolumeResponse{CapacityBytes: size}, nil
}

// expand grows volume id to what r requires (at least its present size)
// and returns its size.
func (s *Server) expand(ctx context.Context, id string, r *csipb.CapacityRange) (int64, error) {
	if err := volumes.ValidateName(id); err != nil {
		return 0, status.Errorf(codes.NotFound, "volume %q does not exist", quote.Prefix(id))
	}
	info, err := s.core.Get(ctx, id)
	if err != nil {
		return 0, toStatus(err)
	}
	size := max(info.SizeBytes, (r.GetRequiredBytes()+mib-1)/mib*mib)
	if lim := r.GetLimitBytes(); lim > 0 && size > lim {
		return 0, status.Errorf(codes.OutOfRange, "volume %q is %d bytes, above limit_bytes %d; volumes only grow", quote.Prefix(id), size, lim)
	}
	if err := s.core.Resize(ctx, id, size); err != nil {
		return 0, toStatus(err)
	}
	return size, nil
}
