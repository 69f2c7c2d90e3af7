package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"os/user"
	"strconv"
	"syscall"
	"time"

	"github.com/blockvol/blockvol/config"
	"github.com/blockvol/blockvol/internal/unixsock"
	"github.com/blockvol/blockvol/metrics"
	"github.com/blockvol/blockvol/plugin"
	"github.com/blockvol/blockvol/volumes"
	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/docker/go-plugins-helpers/volume"
)

const defaultConfigPath = config.DefaultPath

// shutdownGrace bounds how long a SIGTERM waits for operations in flight.
// It is above every call's own deadline (create and mount 100 s at most,
// each ending with its undo), so an operation normally finishes or rolls
// back on its own; systemd/blockvol.service's TimeoutStopSec is above it.
const shutdownGrace = 150 * time.Second

// recoverTimeout bounds the reconciliation of earlier state at start.
const recoverTimeout = 2 * time.Minute

// watchInterval is how often the core checks the shared side of the
// volumes mounted here (volumes.Core.Watch): a target that tgtd forgot in
// a restart is exported again within about this long plus one round trip,
// well inside the initiator's replacement_timeout.
const watchInterval = 2 * time.Second

func serve(cfg config.Config, csiEndpoint string, stderr io.Writer) error {
	if csiEndpoint != "" {
		if _, err := config.CSISocketPath(csiEndpoint); err != nil {
			return fmt.Errorf("--csi-endpoint: %w", err)
		}
		cfg.CSI.Endpoint = csiEndpoint
	}
	log := newLogger(cfg.LogLevel, stderr)
	slog.SetDefault(log)

	// Bind first (or take systemd's socket): Docker must find the socket
	// even while we recover.
	l, activated, err := pluginListener(cfg, log)
	if err != nil {
		return err
	}
	if !activated {
		// Our own socket goes with us: a socket file nobody answers on
		// stalls Docker ~15 s per call. systemd's socket stays: systemd
		// owns it and queues connections until we are started again.
		defer os.Remove(cfg.Socket)
	}
	defer l.Close()
	log.Info("listening", "socket", l.Addr().String(), "activated", activated, "name", cfg.Name, "version", version)

	var obs volumes.Observer
	var m *metrics.Metrics
	if cfg.Metrics.Listen != "" {
		m = metrics.New()
		obs = m
	}
	core, err := newCore(cfg, log, obs)
	if err != nil {
		return err
	}
	if m != nil {
		m.SetStats(core)
		stop := startMetrics(m, cfg.Metrics.Listen, log)
		defer stop()
	}
	door, err := newCSIDoor(cfg, core, log)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), recoverTimeout)
	if err := core.Recover(ctx); err != nil {
		log.Error("recovery left work undone; it is retried at each volume's next operation", "err", err)
	}
	cancel()
	// Re-exports what a restarted target forgot, and notices volumes
	// taken over by another host, while volumes are mounted here.
	watch, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	go core.Watch(watch, watchInterval)
	if door != nil {
		stop, err := door.serve()
		if err != nil {
			return err
		}
		defer stop()
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	notify(log, daemon.SdNotifyReady)
	return serveUntilSignal(l, plugin.New(core), sigs, shutdownGrace, log)
}

// waitingDriver is a volume.Driver that can wait for its calls in flight
// (plugin.Driver).
type waitingDriver interface {
	volume.Driver
	Wait(ctx context.Context) error
}

// serveUntilSignal serves drv on l until a signal arrives, then stops
// accepting connections, closes the idle ones and those still sending a
// request, lets the calls in progress finish or roll back (at most grace)
// and waits until their answers are written.
func serveUntilSignal(l net.Listener, drv waitingDriver, sigs <-chan os.Signal, grace time.Duration, log *slog.Logger) error {
	calls := newCallTracker()
	h := plugin.NewHandler(drv)
	h.Begin = calls.begin
	h.Log = log
	srv := &http.Server{
		Handler:     h,
		ConnState:   calls.connState,
		ConnContext: calls.connContext,
		ErrorLog:    slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	served := make(chan error, 1)
	if ext, ok := drv.(interface{ Extend(*plugin.Handler) }); ok {
		ext.Extend(h) // blockvol's own calls (snapshots, resize)
	}
	go func() { served <- srv.Serve(l) }()

	select {
	case sig := <-sigs:
		log.Info("stopping: no new requests; waiting for the calls in progress", "signal", sig.String(), "grace", grace)
		notify(log, daemon.SdNotifyStopping)
		l.Close()
		idle := calls.stop()
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		// A second signal is an operator who will not wait: exit now,
		// and leave the rest to the crash recovery of the next start.
		forced := make(chan struct{})
		go func() {
			select {
			case <-sigs:
				close(forced)
				cancel()
			case <-ctx.Done():
			}
		}()
		err := drv.Wait(ctx)
		if err == nil {
			select {
			case <-idle:
			case <-ctx.Done():
				err = ctx.Err()
			}
		}
		select {
		case <-forced:
			return errors.New("a second signal ended the wait for operations in flight; the next start finishes or rolls them back")
		default:
		}
		if err != nil {
			return fmt.Errorf("operations still running after %s (the next start finishes or rolls them back): %w", grace, err)
		}
		log.Info("stopped")
		return nil
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	}
}

// notify tells systemd (Type=notify) about our state; without systemd
// (no NOTIFY_SOCKET) it does nothing.
func notify(log *slog.Logger, state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		log.Warn("could not notify systemd", "state", state, "err", err)
	}
}

// startMetrics serves the metrics endpoint in the background and returns
// the function that stops it. A listener that cannot be bound is logged,
// not fatal: Docker's volumes matter more than their metrics.
func startMetrics(m *metrics.Metrics, addr string, log *slog.Logger) (stop func()) {
	ml, err := metrics.Listen(addr)
	if err != nil {
		log.Error("metrics disabled", "listen", addr, "err", err)
		return func() {}
	}
	log.Info("serving metrics", "listen", addr)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := m.Serve(ctx, ml); err != nil {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	return func() { cancel(); <-done }
}

func newLogger(level string, w io.Writer) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level)) // validated by config
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lv}))
}

// pluginListener returns the socket systemd passed us (socket activation:
// LISTEN_FDS/LISTEN_PID, blockvol.socket) or, without one, binds
// cfg.Socket itself. activated reports the former.
func pluginListener(cfg config.Config, log *slog.Logger) (l net.Listener, activated bool, err error) {
	ls, err := activation.Listeners()
	if err != nil {
		return nil, false, fmt.Errorf("socket activation: %w", err)
	}
	switch len(ls) {
	case 0:
		l, err := listen(cfg.Socket, cfg.SocketGroup)
		return l, false, err
	case 1:
		ul, ok := ls[0].(*net.UnixListener)
		if !ok {
			if ls[0] != nil {
				ls[0].Close()
			}
			return nil, false, errors.New("socket activation: the socket systemd passed is not a listening unix stream socket; blockvol.socket needs ListenStream=/run/docker/plugins/<name>.sock")
		}
		// Never unlink systemd's socket file when we exit.
		ul.SetUnlinkOnClose(false)
		if got := ul.Addr().String(); got != cfg.Socket {
			log.Warn("the activated socket is not the configured one; Docker finds the plugin by the activated socket's name",
				"activated", got, "socket", cfg.Socket)
		}
		return ul, true, nil
	default:
		for _, l := range ls {
			if l != nil {
				l.Close()
			}
		}
		return nil, false, fmt.Errorf("socket activation: systemd passed %d sockets; blockvol.socket must have exactly one ListenStream=", len(ls))
	}
}

// listen binds the plugin socket, mode 0660, owned by root and group. A
// socket file left by a dead process is replaced; one that a live process
// still answers on is not.
func listen(path, group string) (net.Listener, error) {
	gid := 0
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			return nil, fmt.Errorf("socket_group %q: %w", group, err)
		}
		if gid, err = strconv.Atoi(g.Gid); err != nil {
			return nil, fmt.Errorf("socket_group %q: bad gid %q", group, g.Gid)
		}
	}
	return unixsock.Listen(path, 0o660, gid)
}
