//go:build linux

package daemon_test

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/selfannounce/selfannounce/internal/netlab"
)

// host is a hypervisor host without the rest of the lab, for tests about
// the daemon's decisions rather than a whole migration: a bridge xenbr0
// with uplink up0, whose far end pB sits in a switch namespace where a
// capture records everything the host sends out. Guests' ends of the vifs
// live in a guests namespace; bringing one up gives its vif carrier, the
// way a Xen guest's netfront connecting does.
type host struct {
	t              *testing.T
	ns, sw, guests *netlab.NS
	wire           *capture
}

func newHost(t *testing.T) *host {
	t.Helper()
	h := &host{t: t, ns: newNS(t, "hv"), sw: newNS(t, "sw"), guests: newNS(t, "guests")}
	sh(t, h.ns, fmt.Sprintf(`
		ip link add xenbr0 type bridge
		ip link set xenbr0 up
		ip link add up0 type veth peer name pB netns %s
		ip link set up0 master xenbr0 up`, h.sw.Name))
	sh(t, h.sw, "ip link set pB up")
	h.wire = startCapture(t, h.sw, "pB")
	return h
}

// vifBatch returns the `ip -batch` lines that plug vif name into xenbr0,
// admin-up, with its guest end peer down: no carrier yet.
func (h *host) vifBatch(name, peer string) []string {
	return []string{
		fmt.Sprintf("link add %s type veth peer name %s netns %s", name, peer, h.guests.Name),
		fmt.Sprintf("link set %s master xenbr0 up", name),
	}
}

func (h *host) addVif(name, peer string) {
	h.t.Helper()
	batch(h.t, h.ns, h.vifBatch(name, peer))
}

// setGuest raises or drops a vif's carrier from the guest's side.
func (h *host) setGuest(peer string, up bool) {
	h.t.Helper()
	st := "down"
	if up {
		st = "up"
	}
	sh(h.t, h.guests, "ip link set "+peer+" "+st)
}

func (h *host) carrier(vif string) bool {
	h.t.Helper()
	return strings.Contains(sh(h.t, h.ns, "ip -o link show "+vif), "LOWER_UP")
}

// guestYAML renders one guests entry.
func guestYAML(port, mac string, ips ...string) string {
	return fmt.Sprintf("  - port: %q\n    mac: %q\n    ips: [%s]\n", port, mac, quoteAll(ips))
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

// macN is a distinct locally administered guest MAC per index.
func macN(i int) string {
	return net.HardwareAddr{0x52, 0x54, 0x00, 0xaa, byte(i >> 8), byte(i)}.String()
}

// ipN is a distinct guest IPv4 address per index.
func ipN(i int) string { return fmt.Sprintf("10.1.%d.%d", i>>8, i&0xff) }
