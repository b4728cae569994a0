//go:build linux

package qemu_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/wiretest"
)

// startCapture records the frames entering one interface of one
// namespace from now on: a tap's ingress is what the guest (QEMU) sent, a
// veth's ingress what the peer namespace sent.
func startCapture(t *testing.T, ns *netlab.NS, ifname string) *wiretest.Capture {
	t.Helper()
	return wiretest.Start(t, ns, ifname, wiretest.In)
}

// describe renders frames for failure messages, relative to t0.
func describe(fs []wiretest.Frame, t0 time.Time) string {
	s := ""
	for _, f := range fs {
		what := fmt.Sprintf("%d bytes ethertype %#04x", len(f.Data), f.EtherType())
		if a, ok := f.Announcement(); ok {
			ip := "-"
			if a.IP.IsValid() {
				ip = a.IP.String()
			}
			what = fmt.Sprintf("%s %s %s", a.Kind, a.MAC, ip)
		}
		s += fmt.Sprintf("\n  %+8.1fms %s", ms(f.At.Sub(t0)), what)
	}
	return s
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
