package doctor

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Metric names the selfannounce daemon exports.
const (
	MetricArrivals    = "selfannounce_arrivals_total"
	MetricBursts      = "selfannounce_bursts_total"
	MetricLastArrival = "selfannounce_last_arrival_timestamp_seconds"
	MetricLastBurst   = "selfannounce_last_burst_timestamp_seconds"
)

// announceSlack is how long an arrival may go without a burst before the
// doctor calls it unannounced: bursts start within milliseconds, so 5 s
// means the daemon skipped it, not that it is busy.
const announceSlack = 5 * time.Second

// Samples maps a series ("name" or `name{label="value"}` as printed) to its value.
type Samples map[string]float64

// ParseMetrics reads the Prometheus text exposition format, keeping only
// sample lines; labels are kept verbatim as the series key.
func ParseMetrics(r io.Reader) (Samples, error) {
	s := Samples{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		series, rest, err := splitSeries(line)
		if err != nil {
			return nil, fmt.Errorf("metrics line %d: %v", n, err)
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return nil, fmt.Errorf("metrics line %d: no value: %q", n, line)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %d: bad value %q", n, f[0])
		}
		s[series] = v
	}
	return s, sc.Err()
}

// splitSeries splits a sample line after its series name and labels; label
// values are quoted and may hold '}' or escaped quotes.
func splitSeries(line string) (series, rest string, err error) {
	brace := strings.IndexByte(line, '{')
	space := strings.IndexAny(line, " \t")
	if brace < 0 || (space >= 0 && space < brace) {
		series, rest, _ = strings.Cut(line, " ")
		return series, rest, nil
	}
	inQuote := false
	for i := brace + 1; i < len(line); i++ {
		switch c := line[i]; {
		case inQuote && c == '\\':
			i++
		case c == '"':
			inQuote = !inQuote
		case !inQuote && c == '}':
			return line[:i+1], line[i+1:], nil
		}
	}
	return "", "", fmt.Errorf("unterminated labels: %q", line)
}

// bursts returns the burst counts by result label, as "result=n" text.
func (s Samples) bursts() string {
	var parts []string
	for _, r := range []string{"started", "completed", "cancelled", "suppressed"} {
		if v, ok := s[MetricBursts+`{result="`+r+`"}`]; ok {
			parts = append(parts, fmt.Sprintf("%s=%g", r, v))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}

func unixTime(v float64) time.Time {
	sec, frac := math.Modf(v)
	return time.Unix(int64(sec), int64(frac*1e9)).UTC()
}

func checkAgent(ctx context.Context, client *http.Client, url string, now time.Time) []Finding {
	notRunning := func(detail string) []Finding {
		return []Finding{{
			ID: CheckAgent, Object: url, Severity: Error,
			Breaks: "every migration onto this host: without the daemon nothing announces arriving VMs, and a silent guest stays unreachable until the switch's MAC entry ages out (about 5 minutes)",
			Fix:    "start the daemon (systemctl enable --now selfannounce) and check its log; if it listens elsewhere, pass --metrics URL",
			Detail: detail,
		}}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return notRunning(fmt.Sprintf("bad metrics URL: %v", err))
	}
	resp, err := client.Do(req)
	if err != nil {
		return notRunning(fmt.Sprintf("daemon not running: %v", err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return notRunning(fmt.Sprintf("daemon not running: %s answered %s", url, resp.Status))
	}
	s, err := ParseMetrics(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return notRunning(fmt.Sprintf("%s is not the daemon's metrics: %v", url, err))
	}
	arrivals, ok := s[MetricArrivals]
	if !ok {
		return notRunning(fmt.Sprintf("%s has no %s: not the selfannounce daemon", url, MetricArrivals))
	}
	lastArrival, lastBurst := s[MetricLastArrival], s[MetricLastBurst]
	if lastArrival == 0 {
		return nil
	}
	arrival := unixTime(lastArrival)
	if lastArrival <= lastBurst+announceSlack.Seconds() || now.Sub(arrival) < announceSlack {
		return nil
	}
	burst := "never"
	if lastBurst > 0 {
		burst = unixTime(lastBurst).Format(time.RFC3339)
	}
	return []Finding{{
		ID: CheckAgent, Object: url, Severity: Error,
		Breaks: "the last VM that arrived on this host was not announced: the switch may still send its traffic to the old host until the MAC entry ages out",
		Fix:    "read the daemon's log around the arrival time for why no burst started (unknown guest MAC, no path out, send errors); a burst suppressed on purpose by configuration also shows here",
		Detail: fmt.Sprintf("last arrival %s, last burst %s; arrivals_total=%g, bursts: %s",
			arrival.Format(time.RFC3339), burst, arrivals, s.bursts()),
	}}
}
