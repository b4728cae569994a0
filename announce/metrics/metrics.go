// Package metrics defines the daemon's Prometheus metrics. The names are an
// interface: `announce doctor`, the Grafana dashboard and operators' alerts
// read them.
package metrics

import (
	"errors"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds every collector the daemon updates.
type Metrics struct {
	Registry        *prometheus.Registry
	Frames          *prometheus.CounterVec
	FrameErrors     prometheus.Counter
	Bursts          *prometheus.CounterVec
	ResolveFailures prometheus.Counter
	ArrivalRetries  prometheus.Counter
	Latency         prometheus.Histogram
	Arrivals        prometheus.Counter
	LastArrival     prometheus.Gauge
	LastBurst       prometheus.Gauge
	Ports           *prometheus.GaugeVec
	// FDBRefusals counts FDB repairs refused, by linuxbr.RefusalReason:
	// local, static, extern_learn, vm_port. Each refused arrival is not
	// announced.
	FDBRefusals *prometheus.CounterVec
	overruns    atomic.Pointer[func() uint64]
}

// CountOverruns names where the netlink overrun count comes from (the link
// watcher keeps it).
func (m *Metrics) CountOverruns(f func() uint64) { m.overruns.Store(&f) }

// New registers the collectors on a private registry.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Frames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "selfannounce_frames_sent_total", Help: "Announcement frames written, by kind (rarp, garp, na).",
		}, []string{"kind"}),
		FrameErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "selfannounce_frame_errors_total", Help: "Announcement frames whose write failed.",
		}),
		Bursts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "selfannounce_bursts_total", Help: "Bursts by result: started, completed, cancelled, suppressed (deduplicated or flap-guarded).",
		}, []string{"result"}),
		ResolveFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "selfannounce_resolve_failures_total", Help: "Arrivals whose guest identity no resolver knew.",
		}),
		ArrivalRetries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "selfannounce_arrival_retries_total", Help: "Arrival attempts retried after a failure that can pass (resolver error, no uplink yet, FDB repair failed, config reloaded).",
		}),
		Latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "selfannounce_reaction_latency_seconds",
			Help:    "From the arrival event (carrier, guest frame, libvirt resume) to the first frame written.",
			Buckets: []float64{.0001, .00025, .0005, .001, .002, .005, .01, .025, .05, .1, .25, 1},
		}),
		Arrivals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "selfannounce_arrivals_total", Help: "VM arrivals detected.",
		}),
		LastArrival: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "selfannounce_last_arrival_timestamp_seconds", Help: "Unix time of the last arrival.",
		}),
		LastBurst: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "selfannounce_last_burst_timestamp_seconds", Help: "Unix time of the last burst's first frame.",
		}),
		Ports: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "selfannounce_ports", Help: "VM ports known, by state: ready or waiting.",
		}, []string{"state"}),
		FDBRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "selfannounce_fdb_refusals_total",
			Help: "Bridge FDB repairs refused (the arrival was not announced), by reason: local, static, extern_learn, vm_port.",
		}, []string{"reason"}),
	}
	overruns := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "selfannounce_netlink_overruns_total",
		Help: "Netlink receive-buffer overruns, each recovered by a re-dump.",
	}, func() float64 {
		if f := m.overruns.Load(); f != nil {
			return float64((*f)())
		}
		return 0
	})
	m.Registry.MustRegister(overruns, m.Frames, m.FrameErrors, m.Bursts, m.ResolveFailures, m.ArrivalRetries, m.Latency, m.Arrivals,
		m.LastArrival, m.LastBurst, m.Ports, m.FDBRefusals,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, k := range []string{"rarp", "garp", "na"} {
		m.Frames.WithLabelValues(k)
	}
	for _, r := range []string{"started", "completed", "cancelled", "suppressed"} {
		m.Bursts.WithLabelValues(r)
	}
	for _, r := range []string{"local", "static", "extern_learn", "vm_port"} {
		m.FDBRefusals.WithLabelValues(r)
	}
	return m
}

// FrameWritten implements burst.Observer.
func (m *Metrics) FrameWritten(kind string, err error) {
	if err != nil {
		m.FrameErrors.Inc()
		return
	}
	m.Frames.WithLabelValues(kind).Inc()
}

// FDBRefused counts one refused FDB repair; it fits linuxbr.FDB's Refused.
func (m *Metrics) FDBRefused(reason string) { m.FDBRefusals.WithLabelValues(reason).Inc() }

// Serve exposes /metrics on addr until the listener is closed. It returns
// once listening, so a bad address is reported at start-up.
func (m *Metrics) Serve(addr string) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			_ = err
		}
	}()
	return func() { srv.Close() }, nil
}
