//go:build linux

package daemon_test

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/wiretest"
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

// linkToggler sets links up and down in a namespace with one ioctl each,
// fast enough to flap a link on a 50 ms beat, which `ip` cannot.
type linkToggler struct{ *wiretest.Toggler }

func newLinkToggler(t *testing.T, ns *netlab.NS) linkToggler {
	t.Helper()
	return linkToggler{wiretest.NewToggler(t, ns)}
}

func (lt linkToggler) set(name string, up bool) error {
	_, err := lt.Set(name, up)
	return err
}

// teach makes the host's bridge learn each MAC behind its uplink, as it
// does in the field from a guest's broadcasts while the guest lives on
// another host: one broadcast per MAC, sent from the switch's side.
func (h *host) teach(macs []string) {
	h.t.Helper()
	var frames [][]byte
	for _, m := range macs {
		src, err := net.ParseMAC(m)
		if err != nil {
			h.t.Fatalf("teaching the host bridge: %v", err)
		}
		f := make([]byte, 60)
		copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
		copy(f[6:12], src)
		f[12], f[13] = 0x88, 0xb5 // local experimental ethertype: nobody answers
		frames = append(frames, f)
	}
	if err := wiretest.Inject(h.sw, "pB", frames...); err != nil {
		h.t.Fatalf("teaching the host bridge: %v", err)
	}
}

// fdb returns the host bridge's dynamic entries: MAC → port.
func (h *host) fdb() map[string]string {
	h.t.Helper()
	out := map[string]string{}
	for _, line := range strings.Split(sh(h.t, h.ns, "bridge fdb show br xenbr0"), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[1] == "dev" && !strings.Contains(line, "permanent") {
			out[f[0]] = f[2]
		}
	}
	return out
}
