package csi

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/quote"
	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/volumes"
	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const mib = int64(1) << 20

// ControllerGetCapabilities lists what the controller does (snapshots,
// clones and expansion: csi/snapshot.go); see docs/csi.md for what it
// does not.
func (s *Server) ControllerGetCapabilities(context.Context, *csipb.ControllerGetCapabilitiesRequest) (*csipb.ControllerGetCapabilitiesResponse, error) {
	var caps []*csipb.ControllerServiceCapability
	for _, t := range []csipb.ControllerServiceCapability_RPC_Type{
		csipb.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csipb.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME,
		csipb.ControllerServiceCapability_RPC_PUBLISH_READONLY,
		csipb.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csipb.ControllerServiceCapability_RPC_GET_CAPACITY,
		csipb.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csipb.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csipb.ControllerServiceCapability_RPC_GET_SNAPSHOT,
		csipb.ControllerServiceCapability_RPC_CLONE_VOLUME,
		csipb.ControllerServiceCapability_RPC_EXPAND_VOLUME,
	} {
		caps = append(caps, &csipb.ControllerServiceCapability{Type: &csipb.ControllerServiceCapability_Rpc{Rpc: &csipb.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csipb.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// checkCaps refuses capabilities blockvol cannot give: a block volume is
// used by one node at a time (a filesystem on it is not a cluster
// filesystem), so only the single-node modes are accepted.
func checkCaps(caps []*csipb.VolumeCapability) error {
	if len(caps) == 0 {
		return invalid("volume capabilities are missing")
	}
	for _, c := range caps {
		if reason := unsupported(c); reason != "" {
			return invalid("%s", reason)
		}
	}
	return nil
}

// unsupported says why a capability cannot be given, "" when it can.
func unsupported(c *csipb.VolumeCapability) string {
	if c == nil || c.GetAccessMode() == nil {
		return "a volume capability has no access mode"
	}
	if c.GetBlock() == nil && c.GetMount() == nil {
		return "a volume capability has no access type (block or mount)"
	}
	switch m := c.GetAccessMode().GetMode(); m {
	case csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, csipb.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY:
	default:
		return fmt.Sprintf("access mode %s is not supported: a blockvol volume is used by one node at a time (SINGLE_NODE_WRITER or SINGLE_NODE_READER_ONLY)", m)
	}
	if fs := c.GetMount().GetFsType(); fs != "" && fs != "ext4" && fs != "xfs" {
		return fmt.Sprintf("fs_type %q is not supported; use ext4 or xfs", quote.Prefix(fs))
	}
	return ""
}

// createOptions turns CreateVolume's parameters and capacity range into the
// core's create options. Parameters are the Docker options (fstype, type,
// backend, iops, availabilityzone, mountopts, overwritefs, preempt); size
// comes from the capacity range only.
func createOptions(req *csipb.CreateVolumeRequest, def int64) (map[string]string, error) {
	opts := map[string]string{}
	for k, v := range req.GetParameters() {
		if strings.EqualFold(strings.TrimSpace(k), "size") {
			return nil, invalid("parameter size is not accepted: the capacity range gives the size")
		}
		opts[k] = v
	}
	for _, c := range req.GetVolumeCapabilities() {
		if fs := c.GetMount().GetFsType(); fs != "" {
			if prev, ok := opts["fstype"]; ok && prev != fs {
				return nil, invalid("fs_type %q of a capability contradicts parameter fstype %q", quote.Prefix(fs), quote.Prefix(prev))
			}
			opts["fstype"] = fs
		}
	}
	size, err := pickSize(req.GetCapacityRange(), def)
	if err != nil {
		return nil, err
	}
	opts["size"] = strconv.FormatInt(size/mib, 10) + "M"
	return opts, nil
}

// pickSize chooses the size: the required bytes rounded up to MiB, or the
// default, within the limit.
func pickSize(r *csipb.CapacityRange, def int64) (int64, error) {
	req, lim := r.GetRequiredBytes(), r.GetLimitBytes()
	if req < 0 || lim < 0 {
		return 0, invalid("capacity range bytes must not be negative")
	}
	if lim > 0 && req > lim {
		return 0, status.Errorf(codes.OutOfRange, "required_bytes %d is above limit_bytes %d", req, lim)
	}
	size := req
	if size == 0 {
		size = def
		if lim > 0 && size > lim {
			size = lim
		}
	}
	size = (size + mib - 1) / mib * mib
	if lim > 0 && size > lim {
		return 0, status.Errorf(codes.OutOfRange, "no whole number of MiB lies between required_bytes %d and limit_bytes %d", req, lim)
	}
	return size, nil
}

// CreateVolume makes a volume named req.Name; its id is the name. A repeat
// with a compatible request returns the volume; an incompatible one (other
// size range, fstype or backend) is ALREADY_EXISTS.
func (s *Server) CreateVolume(ctx context.Context, req *csipb.CreateVolumeRequest) (*csipb.CreateVolumeResponse, error) {
	name := req.GetName()
	if name == "" {
		return nil, invalid("name is missing")
	}
	if err := volumes.ValidateName(name); err != nil {
		return nil, toStatus(err)
	}
	if err := checkCaps(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	from, err := contentSource(req.GetVolumeContentSource())
	if err != nil {
		return nil, err
	}
	opts, err := createOptions(req, s.core.DefaultOptions().SizeBytes)
	if err != nil {
		return nil, err
	}
	if from != "" {
		if err := s.checkSource(ctx, req.GetVolumeContentSource()); err != nil {
			return nil, err
		}
		opts["from"] = from
	}
	bn, ok := lookupFold(opts, "backend")
	if !ok {
		bn = s.core.DefaultBackend()
	}
	_, zoned := s.core.Zones()[bn]
	if _, set := lookupFold(opts, "availabilityzone"); zoned && !set {
		if z := pickZone(req.GetAccessibilityRequirements(), bn); z != "" {
			opts["availabilityzone"] = z
		}
	}
	info, err := s.core.Get(ctx, name)
	switch {
	case errors.Is(err, sentinel.ErrNotFound):
		if err := s.core.Create(ctx, name, opts); err != nil {
			return nil, toStatus(err)
		}
		if info, err = s.core.Get(ctx, name); err != nil {
			return nil, toStatus(err)
		}
	case err != nil:
		return nil, toStatus(err)
	}
	if info.Unreachable != nil {
		return nil, status.Errorf(codes.Unavailable, "volume %q: %v", quote.Prefix(name), info.Unreachable)
	}
	if why := incompatible(info, req, opts); why != "" {
		return nil, status.Errorf(codes.AlreadyExists, "volume %q exists already with %s", quote.Prefix(name), why)
	}
	v := s.csiVolume(info)
	v.AccessibleTopology = volumeTopology(info, zoned)
	v.ContentSource = req.GetVolumeContentSource()
	return &csipb.CreateVolumeResponse{Volume: v}, nil
}

// incompatible says how an existing volume differs from a create request,
// "" when it satisfies it.
func incompatible(info volumes.Info, req *csipb.CreateVolumeRequest, opts map[string]string) string {
	r := req.GetCapacityRange()
	if r.GetRequiredBytes() > 0 && info.SizeBytes < r.GetRequiredBytes() {
		return fmt.Sprintf("%d bytes, less than the %d required", info.SizeBytes, r.GetRequiredBytes())
	}
	if r.GetLimitBytes() > 0 && info.SizeBytes > r.GetLimitBytes() {
		return fmt.Sprintf("%d bytes, more than the limit of %d", info.SizeBytes, r.GetLimitBytes())
	}
	if fs, ok := opts["fstype"]; ok && info.OptionsKnown && !strings.EqualFold(fs, info.Options.FSType) {
		return fmt.Sprintf("fstype %s", info.Options.FSType)
	}
	if bn, ok := lookupFold(opts, "backend"); ok && bn != info.Backend {
		return fmt.Sprintf("backend %s", info.Backend)
	}
	return ""
}

func lookupFold(m map[string]string, key string) (string, bool) {
	for k, v := range m {
		if strings.EqualFold(strings.TrimSpace(k), key) {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

// csiVolume describes a volume for the CO; its context carries what the
// node side needs to know.
func (s *Server) csiVolume(info volumes.Info) *csipb.Volume {
	vc := map[string]string{"backend": info.Backend}
	if info.OptionsKnown {
		vc["fstype"] = info.Options.FSType
		if info.Options.Preempt {
			vc["preempt"] = "true"
		}
	}
	return &csipb.Volume{VolumeId: info.Name, CapacityBytes: info.SizeBytes, VolumeContext: vc}
}

// DeleteVolume removes a volume; a missing one is success. A volume in use
// on this host (by CSI or Docker) or attached elsewhere is
// FAILED_PRECONDITION.
func (s *Server) DeleteVolume(ctx context.Context, req *csipb.DeleteVolumeRequest) (*csipb.DeleteVolumeResponse, error) {
	if err := remove(ctx, "volume_id", req.GetVolumeId(), s.core.Remove); err != nil {
		return nil, err
	}
	return &csipb.DeleteVolumeResponse{}, nil
}

// remove is the body of DeleteVolume and DeleteSnapshot: an empty id is
// INVALID_ARGUMENT naming field; an id no volume or snapshot can have, and
// one rm reports missing (ErrNotFound), are success; rm's other errors
// are returned as gRPC statuses.
func remove(ctx context.Context, field, id string, rm func(context.Context, string) error) error {
	if err := required(field, id); err != nil {
		return err
	}
	if volumes.ValidateName(id) != nil {
		return nil // no such volume or snapshot can exist
	}
	if err := rm(ctx, id); err != nil && !errors.Is(err, sentinel.ErrNotFound) {
		return toStatus(err)
	}
	return nil
}

// required is INVALID_ARGUMENT "<field> is missing" when value is empty,
// nil otherwise.
func required(field, value string) error {
	if value == "" {
		return invalid("%s is missing", field)
	}
	return nil
}

// publishKey is the annotation that records the node a volume is
// controller-published to: "<node id>:rw" or "<node id>:ro".
const publishKey = "csi.published"

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// knownNode tells whether node can use a volume of backend bn: this host
// always; another host only for a shared backend, named by its host UUID.
func (s *Server) knownNode(node, bn string) bool {
	if node == s.cfg.NodeID {
		return true
	}
	return s.core.BackendScope(bn) == backends.ScopeGlobal && uuidRE.MatchString(node)
}

// ControllerPublishVolume grants a node the volume. One node at a time:
// publishing to node B while node A holds it is FAILED_PRECONDITION unless
// the volume was created with preempt=true; then B takes it over and its
// NodeStage attaches with preempt, which fences A off at the backend.
func (s *Server) ControllerPublishVolume(ctx context.Context, req *csipb.ControllerPublishVolumeRequest) (*csipb.ControllerPublishVolumeResponse, error) {
	id, node := req.GetVolumeId(), req.GetNodeId()
	if err := cmp.Or(required("volume_id", id), required("node_id", node), usable(req.GetVolumeCapability())); err != nil {
		return nil, err
	}
	info, err := s.core.Get(ctx, id)
	if err != nil {
		return nil, toStatus(err)
	}
	if !s.knownNode(node, info.Backend) {
		return nil, status.Errorf(codes.NotFound, "node %q is not known: volumes of backend %s can be used by node %s only", quote.Prefix(node), info.Backend, s.cfg.NodeID)
	}
	mode := "rw"
	if req.GetReadonly() {
		mode = "ro"
	}
	want := node + ":" + mode
	preempted := ""
	err = s.core.Annotate(ctx, id, publishKey, func(old string) (string, error) {
		oldNode, oldMode, _ := strings.Cut(old, ":")
		switch {
		case old == "" || old == want:
			return want, nil
		case oldNode == node:
			return "", status.Errorf(codes.AlreadyExists, "volume %q is published to node %s %s already; unpublish it first to change that", quote.Prefix(id), node, oldMode)
		case info.OptionsKnown && info.Options.Preempt:
			preempted = oldNode
			return want, nil
		default:
			return "", status.Errorf(codes.FailedPrecondition, "volume %q is published to node %s; unpublish it there first (or create it with preempt=true to allow a takeover)", quote.Prefix(id), oldNode)
		}
	})
	if err != nil {
		return nil, toStatus(err)
	}
	pc := map[string]string{}
	if preempted != "" {
		s.log.Warn("volume taken over from another node", "volume", id, "from", preempted, "to", node)
		pc["preempt"] = "true"
	}
	return &csipb.ControllerPublishVolumeResponse{PublishContext: pc}, nil
}

// ControllerUnpublishVolume withdraws the grant; a volume or node that has
// none is success.
func (s *Server) ControllerUnpublishVolume(ctx context.Context, req *csipb.ControllerUnpublishVolumeRequest) (*csipb.ControllerUnpublishVolumeResponse, error) {
	id, node := req.GetVolumeId(), req.GetNodeId()
	if id == "" {
		return nil, invalid("volume_id is missing")
	}
	if volumes.ValidateName(id) != nil {
		return &csipb.ControllerUnpublishVolumeResponse{}, nil
	}
	err := s.core.Annotate(ctx, id, publishKey, func(old string) (string, error) {
		oldNode, _, _ := strings.Cut(old, ":")
		if node == "" || oldNode == node {
			return "", nil
		}
		return old, nil
	})
	if err != nil && !errors.Is(err, sentinel.ErrNotFound) {
		return nil, toStatus(err)
	}
	return &csipb.ControllerUnpublishVolumeResponse{}, nil
}

// ValidateVolumeCapabilities confirms the capabilities blockvol can give
// the volume.
func (s *Server) ValidateVolumeCapabilities(ctx context.Context, req *csipb.ValidateVolumeCapabilitiesRequest) (*csipb.ValidateVolumeCapabilitiesResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, invalid("volume_id is missing")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, invalid("volume capabilities are missing")
	}
	info, err := s.core.Get(ctx, id)
	if err != nil {
		return nil, toStatus(err)
	}
	for _, c := range req.GetVolumeCapabilities() {
		why := unsupported(c)
		if fs := c.GetMount().GetFsType(); why == "" && fs != "" && info.OptionsKnown && fs != info.Options.FSType {
			why = fmt.Sprintf("the volume holds %s, not %s", info.Options.FSType, quote.Prefix(fs))
		}
		if why != "" {
			return &csipb.ValidateVolumeCapabilitiesResponse{Message: why}, nil
		}
	}
	return &csipb.ValidateVolumeCapabilitiesResponse{Confirmed: &csipb.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

// tokenPrefix marks ListVolumes tokens: "bv1:" and the name to start at.
// Names, not offsets: a volume deleted between pages shifts nothing.
const tokenPrefix = "bv1:"

// pageStart checks a List request's max_entries and starting_token and
// returns the name its page starts at ("" for the first page); a token
// this plugin did not make is Aborted, as the CSI spec asks.
func pageStart(maxEntries int32, token string) (string, error) {
	if maxEntries < 0 {
		return "", invalid("max_entries must not be negative")
	}
	if token == "" {
		return "", nil
	}
	start, ok := strings.CutPrefix(token, tokenPrefix)
	if !ok || start == "" {
		return "", status.Errorf(codes.Aborted, "starting_token %q was not made by this plugin", quote.Prefix(token))
	}
	return start, nil
}

// page returns the items of sorted (ascending by name) from the first
// named start or later, at most maxEntries of them (0: all), and the token
// of the next page ("" on the last page).
func page[T any](sorted []T, name func(T) string, start string, maxEntries int32) ([]T, string) {
	sorted = sorted[sort.Search(len(sorted), func(i int) bool { return name(sorted[i]) >= start }):]
	if n := int(maxEntries); n > 0 && len(sorted) > n {
		return sorted[:n], tokenPrefix + name(sorted[n])
	}
	return sorted, ""
}

// ListVolumes lists every volume of every backend (Docker's included),
// sorted by name, max_entries at a time.
func (s *Server) ListVolumes(ctx context.Context, req *csipb.ListVolumesRequest) (*csipb.ListVolumesResponse, error) {
	start, err := pageStart(req.GetMaxEntries(), req.GetStartingToken())
	if err != nil {
		return nil, err
	}
	infos, err := s.core.List(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	infos, next := page(infos, func(v volumes.Info) string { return v.Name }, start, req.GetMaxEntries())
	out := &csipb.ListVolumesResponse{NextToken: next}
	for _, info := range infos {
		out.Entries = append(out.Entries, &csipb.ListVolumesResponse_Entry{
			Volume: &csipb.Volume{VolumeId: info.Name, CapacityBytes: info.SizeBytes, VolumeContext: map[string]string{"backend": info.Backend}},
		})
	}
	return out, nil
}

// GetCapacity reports the free capacity of the backend named by the
// parameter backend (default: the default backend), when it can tell
// (loop: the free space of its data directory).
func (s *Server) GetCapacity(ctx context.Context, req *csipb.GetCapacityRequest) (*csipb.GetCapacityResponse, error) {
	bn, _ := lookupFold(req.GetParameters(), "backend")
	for _, c := range req.GetVolumeCapabilities() {
		if unsupported(c) != "" {
			return &csipb.GetCapacityResponse{}, nil // no room for what it cannot give
		}
	}
	n, known, err := s.core.Capacity(ctx, bn)
	if err != nil {
		return nil, toStatus(err)
	}
	if !known {
		if bn == "" {
			bn = s.core.DefaultBackend()
		}
		return nil, status.Errorf(codes.Unimplemented, "backend %s cannot tell its free capacity", bn)
	}
	return &csipb.GetCapacityResponse{AvailableCapacity: n}, nil
}
