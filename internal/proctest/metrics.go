package proctest

import (
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/selfannounce/selfannounce/internal/netlab"
)

var metricRe = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)`)

// Metrics scrapes the Prometheus endpoint at addr from inside ns: the
// connection is opened on a thread switched into the namespace, so it
// belongs to it. Keys are "name{labels}" as exposed.
func Metrics(ns *netlab.NS, addr string) (map[string]float64, error) {
	var body string
	err := ns.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n"); err != nil {
			return err
		}
		b, err := io.ReadAll(c)
		body = string(b)
		return err
	})
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(body, "HTTP/1.0 200") && !strings.HasPrefix(body, "HTTP/1.1 200") {
		return nil, fmt.Errorf("metrics: unexpected response %.80q", body)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		m := metricRe.FindStringSubmatch(line)
		if m == nil || strings.HasPrefix(line, "#") {
			continue
		}
		if v, err := strconv.ParseFloat(m[3], 64); err == nil {
			out[m[1]+m[2]] = v
		}
	}
	return out, nil
}
