// Package csi is blockvol's Container Storage Interface (v1) front door:
// the Identity, Controller and Node services over gRPC, a thin adapter over
// the protocol-free core (package volumes), beside the Docker VolumeDriver
// door (package plugin), which it does not know.
//
// One volume, two doors: a CSI volume id is the volume's name, so a volume
// created by `docker volume create` is listed and usable here, and the
// other way round. CSI's uses are claims in the core's crash-safe records,
// beside Docker's mount IDs: "csi-stage:<staging path>" and
// "csi-publish:<target path>". The core mounts a volume once, at its own
// mountpoint; NodeStage bind-mounts that at the staging path and
// NodePublish bind-mounts the staging path at the target (read-only when
// asked). A raw block volume is attached only; its device node is
// bind-mounted on a file in the staging directory and at the target.
package csi

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/volumes"
	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Mounts is what the CSI door needs of the fs package (fs.FS).
type Mounts interface {
	// Bind bind-mounts source at target (creating it), read-only when
	// asked; idempotent; a different mount there wraps
	// fs.ErrMountedDifferently.
	Bind(ctx context.Context, source, target string, readOnly bool) error
	// Unbind unmounts target and removes it; a missing target is success.
	Unbind(ctx context.Context, target string) error
	// Unmount unmounts target and keeps it; not mounted is success.
	Unmount(ctx context.Context, target string) error
	// IsMountPoint reports whether something is mounted at target.
	IsMountPoint(target string) (bool, error)
}

// Config wires a Server.
type Config struct {
	Core   *volumes.Core
	Mounts Mounts
	// Name is the plugin name GetPluginInfo reports (a domain-like name).
	Name    string
	Version string
	// NodeID identifies this host: its host UUID.
	NodeID string
	Log    *slog.Logger
	// ErrMountedDifferently classifies Mounts' errors (fs.ErrMountedDifferently).
	ErrMountedDifferently error
}

// Claim prefixes of the CSI door's users in the core's records.
const (
	stagePrefix   = "csi-stage:"
	publishPrefix = "csi-publish:"
)

// Server implements the Identity, Controller and Node services.
type Server struct {
	csipb.UnimplementedIdentityServer
	csipb.UnimplementedControllerServer
	csipb.UnimplementedNodeServer

	cfg  Config
	core *volumes.Core
	log  *slog.Logger
}

// New returns the CSI door of cfg.Core and registers the checker of its
// claims with the core, so that the core's Recover drops a CSI claim whose
// mount did not survive. Call it before Recover.
func New(cfg Config) (*Server, error) {
	if cfg.Core == nil || cfg.Mounts == nil {
		return nil, errors.New("csi: a core and mounts are needed")
	}
	if cfg.NodeID == "" {
		return nil, errors.New("csi: no node id (host UUID)")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Name == "" {
		cfg.Name = "blockvol.csi"
	}
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	s := &Server{cfg: cfg, core: cfg.Core, log: cfg.Log.With("door", "csi")}
	s.core.CheckClaims(stagePrefix, s.claimAlive)
	s.core.CheckClaims(publishPrefix, s.claimAlive)
	return s, nil
}

// claimAlive: a CSI claim is held while its path is a mount point.
func (s *Server) claimAlive(user string) (bool, error) {
	path := user[strings.Index(user, ":")+1:]
	if strings.HasPrefix(user, stagePrefix) {
		if ok, err := s.cfg.Mounts.IsMountPoint(blockFile(path)); ok || err != nil {
			return ok, err
		}
	}
	return s.cfg.Mounts.IsMountPoint(path)
}

// Register adds the three services to g.
func (s *Server) Register(g *grpc.Server) {
	csipb.RegisterIdentityServer(g, s)
	csipb.RegisterControllerServer(g, s)
	csipb.RegisterNodeServer(g, s)
}

// NewGRPCServer returns a gRPC server with the services registered and
// every call logged (method, code, elapsed).
func (s *Server) NewGRPCServer() *grpc.Server {
	g := grpc.NewServer(grpc.UnaryInterceptor(s.logCall))
	s.Register(g)
	return g
}

func (s *Server) logCall(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	lvl := slog.LevelDebug
	if err != nil {
		lvl = slog.LevelInfo
	}
	s.log.Log(ctx, lvl, "call", "method", info.FullMethod, "code", status.Code(err).String(), "elapsed", time.Since(start).Round(time.Millisecond), "err", err)
	return resp, err
}

// GetPluginInfo names the plugin.
func (s *Server) GetPluginInfo(context.Context, *csipb.GetPluginInfoRequest) (*csipb.GetPluginInfoResponse, error) {
	return &csipb.GetPluginInfoResponse{Name: s.cfg.Name, VendorVersion: s.cfg.Version}, nil
}

// GetPluginCapabilities: a controller service; topology when a backend has
// availability zones; online volume expansion.
func (s *Server) GetPluginCapabilities(context.Context, *csipb.GetPluginCapabilitiesRequest) (*csipb.GetPluginCapabilitiesResponse, error) {
	types := []csipb.PluginCapability_Service_Type{csipb.PluginCapability_Service_CONTROLLER_SERVICE}
	if len(s.core.Zones()) > 0 {
		types = append(types, csipb.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS)
	}
	var caps []*csipb.PluginCapability
	for _, t := range types {
		caps = append(caps, &csipb.PluginCapability{Type: &csipb.PluginCapability_Service_{Service: &csipb.PluginCapability_Service{Type: t}}})
	}
	// Volumes grow while in use: the core grows a mounted filesystem.
	caps = append(caps, &csipb.PluginCapability{Type: &csipb.PluginCapability_VolumeExpansion_{
		VolumeExpansion: &csipb.PluginCapability_VolumeExpansion{Type: csipb.PluginCapability_VolumeExpansion_ONLINE}}})
	return &csipb.GetPluginCapabilitiesResponse{Capabilities: caps}, nil
}

// Probe: ready once serving (recovery runs before the socket is served).
func (s *Server) Probe(context.Context, *csipb.ProbeRequest) (*csipb.ProbeResponse, error) {
	return &csipb.ProbeResponse{}, nil
}

// toStatus maps the core's errors to the spec's codes.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	for _, m := range statusCodes {
		if errors.Is(err, m.err) {
			return status.Error(m.code, err.Error())
		}
	}
	return status.Error(codes.Internal, err.Error())
}

// statusCodes maps the core's errors to the spec's codes, first match
// first; any other error is Internal.
var statusCodes = []struct {
	err  error
	code codes.Code
}{
	{sentinel.ErrNotFound, codes.NotFound},
	{sentinel.ErrInvalid, codes.InvalidArgument},
	{sentinel.ErrInUse, codes.FailedPrecondition},
	{sentinel.ErrExists, codes.AlreadyExists},
	{sentinel.ErrBusy, codes.Aborted},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
	{context.Canceled, codes.Canceled},
}

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

// NodeID is this node's id.
func (s *Server) NodeID() string { return s.cfg.NodeID }
