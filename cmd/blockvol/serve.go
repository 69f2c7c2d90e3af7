package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/blockvol/blockvol/config"
	"github.com/docker/go-plugins-helpers/volume"
)

const defaultConfigPath = config.DefaultPath

// shutdownGrace bounds how long a SIGTERM waits for operations in flight.
const shutdownGrace = 90 * time.Second

// recoverTimeout bounds the reconciliation of earlier state at start.
const recoverTimeout = 2 * time.Minute

func serve(configPath string, stderr io.Writer) error {
	cfg, err := config.Load(configPath)
	if err != nil {
		return err
	}
	log := newLogger(cfg.LogLevel, stderr)
	slog.SetDefault(log)

	// Bind first: Docker must find the socket even while we recover.
	l, err := listen(cfg.Socket, cfg.SocketGroup)
	if err != nil {
		return err
	}
	defer os.Remove(cfg.Socket)
	defer l.Close()
	log.Info("listening", "socket", cfg.Socket, "name", cfg.Name, "version", version)

	drv, err := newDriver(cfg, log, nil)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), recoverTimeout)
	if err := drv.Recover(ctx); err != nil {
		log.Error("recovery left work undone; it is retried at each volume's next operation", "err", err)
	}
	cancel()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	served := make(chan error, 1)
	go func() { served <- volume.NewHandler(drv).Serve(l) }()

	select {
	case sig := <-sigs:
		log.Info("stopping", "signal", sig.String())
		l.Close()
		ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		if err := drv.Wait(ctx); err != nil {
			return fmt.Errorf("operations still running after %s: %w", shutdownGrace, err)
		}
		log.Info("stopped")
		return nil
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	}
}

func newLogger(level string, w io.Writer) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level)) // validated by config
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lv}))
}

// listen binds the plugin socket, mode 0660, owned by root and group. A
// socket file left by a dead process is replaced; one that a live process
// still answers on is not.
func listen(path, group string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if _, err := os.Lstat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("socket %s is in use by another running plugin; stop it first", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
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
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := errors.Join(os.Chmod(path, 0o660), os.Chown(path, 0, gid)); err != nil {
		l.Close()
		return nil, fmt.Errorf("socket %s permissions: %w", path, err)
	}
	return l, nil
}
