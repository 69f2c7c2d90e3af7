package main

import (
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/blockvol/blockvol/config"
	"github.com/blockvol/blockvol/csi"
	"github.com/blockvol/blockvol/fs"
	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/internal/unixsock"
	"github.com/blockvol/blockvol/state"
	"github.com/blockvol/blockvol/volumes"
	"google.golang.org/grpc"
)

// csiDoor is the CSI front door of a serving process, built before
// recovery (so that its claims are checked) and served after it.
type csiDoor struct {
	srv  *csi.Server
	path string
	log  *slog.Logger
}

// newCSIDoor builds the CSI door when cfg.CSI.Endpoint is set ("" = off);
// it returns nil then.
func newCSIDoor(cfg config.Config, core *volumes.Core, log *slog.Logger) (*csiDoor, error) {
	if cfg.CSI.Endpoint == "" {
		return nil, nil
	}
	path, err := config.CSISocketPath(cfg.CSI.Endpoint)
	if err != nil {
		return nil, err
	}
	nodeID := cfg.ISCSI.HostUUID
	if nodeID == "" {
		if nodeID, err = state.HostUUID(cfg.HostUUIDFile()); err != nil {
			return nil, err
		}
	}
	srv, err := csi.New(csi.Config{
		Core:                  core,
		Mounts:                &fs.FS{Run: hostexec.OS{}, Mounter: fs.SyscallMounter{}, Log: log},
		Name:                  cfg.CSI.DriverName,
		Version:               version,
		NodeID:                nodeID,
		Log:                   log,
		ErrMountedDifferently: fs.ErrMountedDifferently,
	})
	if err != nil {
		return nil, err
	}
	return &csiDoor{srv: srv, path: path, log: log}, nil
}

// serve binds the CSI socket and serves it in the background. The returned
// stop ends it: a SIGTERM/SIGINT already stops accepting and lets calls in
// flight finish (the core's Wait covers them); stop then closes the rest
// and removes the socket.
func (c *csiDoor) serve() (stop func(), err error) {
	l, err := unixsock.Listen(c.path, 0o600, 0) // root only: the CO runs as root
	if err != nil {
		return nil, err
	}
	g := c.srv.NewGRPCServer()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := g.Serve(l); err != nil && err != grpc.ErrServerStopped {
			c.log.Error("csi server stopped", "err", err)
		}
	}()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		if _, ok := <-sigs; ok {
			g.GracefulStop()
		}
	}()
	c.log.Info("serving csi", "socket", c.path, "node_id", c.srv.NodeID())
	return func() {
		signal.Stop(sigs)
		close(sigs)
		g.Stop()
		<-done
		os.Remove(c.path)
	}, nil
}
