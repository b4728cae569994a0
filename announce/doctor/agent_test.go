package doctor

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// daemonMetrics serves the daemon's metric set through client_golang's own
// exposition, so the parser meets the format the daemon really emits.
type daemonMetrics struct {
	arrivals    prometheus.Counter
	bursts      *prometheus.CounterVec
	lastArrival prometheus.Gauge
	lastBurst   prometheus.Gauge
	srv         *httptest.Server
}

func newDaemonMetrics(t *testing.T) *daemonMetrics {
	reg := prometheus.NewRegistry()
	m := &daemonMetrics{
		arrivals:    prometheus.NewCounter(prometheus.CounterOpts{Name: MetricArrivals, Help: "VM arrivals seen."}),
		bursts:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricBursts, Help: "Announcement bursts."}, []string{"result"}),
		lastArrival: prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricLastArrival, Help: "Last arrival."}),
		lastBurst:   prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricLastBurst, Help: "Last burst."}),
	}
	reg.MustRegister(m.arrivals, m.bursts, m.lastArrival, m.lastBurst, prometheus.NewGoCollector())
	m.srv = httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(m.srv.Close)
	return m
}

func (m *daemonMetrics) arrive(at time.Time) {
	m.arrivals.Inc()
	m.lastArrival.Set(float64(at.UnixNano()) / 1e9)
}

func (m *daemonMetrics) burst(at time.Time, result string) {
	m.bursts.WithLabelValues(result).Inc()
	m.lastBurst.Set(float64(at.UnixNano()) / 1e9)
}

func agentFindings(t *testing.T, url string, now time.Time) []Finding {
	t.Helper()
	r, err := Run(context.Background(), Options{Root: "testdata/healthy", MetricsURL: url, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	return r.Findings
}

func TestAgent(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	m := newDaemonMetrics(t)

	if f := agentFindings(t, m.srv.URL, now); len(f) != 0 {
		t.Errorf("fresh daemon, no arrivals: %+v", f)
	}

	m.arrive(now.Add(-time.Minute))
	m.burst(now.Add(-time.Minute+30*time.Millisecond), "started")
	m.burst(now.Add(-time.Minute+900*time.Millisecond), "completed")
	if f := agentFindings(t, m.srv.URL, now); len(f) != 0 {
		t.Errorf("announced arrival: %+v", f)
	}

	// A second arrival 40 s later that never got a burst.
	m.arrive(now.Add(-20 * time.Second))
	f := agentFindings(t, m.srv.URL, now)
	if len(f) != 1 || f[0].ID != CheckAgent || f[0].Severity != Error {
		t.Fatalf("unannounced arrival: %+v", f)
	}
	for _, s := range []string{"last arrival 2026-03-01T11:59:40Z", "last burst 2026-03-01T11:59:00Z", "arrivals_total=2", "started=1 completed=1"} {
		if !strings.Contains(f[0].Detail, s) {
			t.Errorf("detail %q lacks %q", f[0].Detail, s)
		}
	}

	// Within the slack the burst may still be on its way.
	if f := agentFindings(t, m.srv.URL, now.Add(-17*time.Second)); len(f) != 0 {
		t.Errorf("arrival 3 s old: %+v", f)
	}

	// Once the arrival is announced the finding goes away.
	m.burst(now.Add(-19*time.Second), "started")
	if f := agentFindings(t, m.srv.URL, now); len(f) != 0 {
		t.Errorf("after burst: %+v", f)
	}
}

func TestAgentNotRunning(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	f := agentFindings(t, url+"/metrics", time.Now())
	if len(f) != 1 || f[0].Severity != Error || !strings.Contains(f[0].Detail, "404") {
		t.Errorf("404: %+v", f)
	}
	srv.Close()
	f = agentFindings(t, url+"/metrics", time.Now())
	if len(f) != 1 || f[0].Severity != Error || !strings.Contains(f[0].Detail, "daemon not running") {
		t.Errorf("closed port: %+v", f)
	}

	other := httptest.NewServer(promhttp.HandlerFor(prometheus.NewPedanticRegistry(), promhttp.HandlerOpts{}))
	defer other.Close()
	f = agentFindings(t, other.URL, time.Now())
	if len(f) != 1 || !strings.Contains(f[0].Detail, "not the selfannounce daemon") {
		t.Errorf("some other exporter: %+v", f)
	}
}

func TestParseMetrics(t *testing.T) {
	s, err := ParseMetrics(strings.NewReader(`# HELP x y
# TYPE selfannounce_bursts_total counter
selfannounce_bursts_total{result="completed"} 3
selfannounce_bursts_total{result="weird value} 5"} 1
selfannounce_last_arrival_timestamp_seconds 1.7e+09
up 1 1700000000000
`))
	if err != nil {
		t.Fatal(err)
	}
	if s[`selfannounce_bursts_total{result="completed"}`] != 3 || s[MetricLastArrival] != 1.7e9 || s["up"] != 1 {
		t.Errorf("%v", s)
	}
	if _, err := ParseMetrics(strings.NewReader("x notanumber\n")); err == nil {
		t.Error("bad value accepted")
	}
}
