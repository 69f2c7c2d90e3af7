// Package metrics exports blockvol's operations to Prometheus: how many
// plugin calls of each kind ran, how many failed and how long they took,
// labelled by operation and backend, and how many volumes this host has
// attached and mounted right now.
//
// It is off by default. `[metrics] listen` in the configuration turns it on,
// on a unix socket or a loopback address only: the endpoint has no
// authentication, and volume names never appear in it.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/blockvol/blockvol/internal/unixsock"
	"github.com/blockvol/blockvol/volumes"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Buckets of the latency histograms, in seconds: from a Get answered from
// memory to a Mount that formats a large volume under its 100 s deadline.
var Buckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 25, 50, 100}

var _ volumes.Observer = (*Metrics)(nil)

// StatsSource reports the volumes this host has attached and mounted
// (volumes.Core.Stats).
type StatsSource interface {
	Stats() (attached, mounted int)
}

// Metrics implements volumes.Observer and serves what it observed.
type Metrics struct {
	reg      *prometheus.Registry
	ops      *prometheus.CounterVec
	errs     *prometheus.CounterVec
	duration *prometheus.HistogramVec

	mu    sync.RWMutex
	stats StatsSource
}

// New returns Metrics with its own registry, holding the Go runtime and
// process collectors besides blockvol's own.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "blockvol_operations_total",
			Help: "Plugin calls finished, by operation and backend (backend is empty when the call failed before one was known, and for list).",
		}, []string{"op", "backend"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "blockvol_operation_errors_total",
			Help: "Plugin calls that returned an error, by operation and backend.",
		}, []string{"op", "backend"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "blockvol_operation_duration_seconds",
			Help:    "Time taken by plugin calls, by operation and backend, failed calls included.",
			Buckets: Buckets,
		}, []string{"op", "backend"}),
	}
	m.reg.MustRegister(m.ops, m.errs, m.duration, statsCollector{m},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Observe implements volumes.Observer.
func (m *Metrics) Observe(op, backend string, elapsed time.Duration, err error) {
	m.ops.WithLabelValues(op, backend).Inc()
	if err != nil {
		m.errs.WithLabelValues(op, backend).Inc()
	}
	m.duration.WithLabelValues(op, backend).Observe(elapsed.Seconds())
}

// SetStats names where the volume gauges are read at each scrape. Until it
// is called the gauges are not exported (the driver is built after its
// Observer).
func (m *Metrics) SetStats(s StatsSource) {
	m.mu.Lock()
	m.stats = s
	m.mu.Unlock()
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

var (
	attachedDesc = prometheus.NewDesc("blockvol_volumes_attached",
		"Volumes attached to this host (in use, or in the middle of an operation).", nil, nil)
	mountedDesc = prometheus.NewDesc("blockvol_volumes_mounted",
		"Volumes mounted on this host.", nil, nil)
)

// statsCollector reads the gauges at scrape time, so they are never stale.
type statsCollector struct{ m *Metrics }

func (c statsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- attachedDesc
	ch <- mountedDesc
}

func (c statsCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.mu.RLock()
	s := c.m.stats
	c.m.mu.RUnlock()
	if s == nil {
		return
	}
	attached, mounted := s.Stats()
	ch <- prometheus.MustNewConstMetric(attachedDesc, prometheus.GaugeValue, float64(attached))
	ch <- prometheus.MustNewConstMetric(mountedDesc, prometheus.GaugeValue, float64(mounted))
}

// Listen binds the metrics endpoint: "unix:/path" (the socket is created
// mode 0660, its directory 0755, and a stale socket file is replaced) or a
// "host:port" that the configuration has validated as loopback.
func Listen(addr string) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, "unix:")
	if !ok {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
		}
		return l, nil
	}
	l, err := unixsock.Listen(path, 0o660, -1)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return l, nil
}

// Serve serves the metrics on l until ctx ends, then shuts the server down
// (a unix socket file is removed by the listener's Close).
func (m *Metrics) Serve(ctx context.Context, l net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := srv.Shutdown(sctx)
		if serr := <-done; !errors.Is(serr, http.ErrServerClosed) {
			err = errors.Join(err, serr)
		}
		return err
	}
}
