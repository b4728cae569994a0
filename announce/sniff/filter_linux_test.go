//go:build linux

package sniff

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/mdlayher/packet"

	"github.com/selfannounce/selfannounce/announce/frame"
	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/testenv"
)

// TestKernelFilter counts what the kernel queues on a sniffer's socket:
// the filter must pass announcements, tag-stripped or not, and nothing else.
func TestKernelFilter(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "ip")
	ns := netlab.TestNS(t, "sniffbpf")
	ns.MustRun(t, "ip", "link", "add", "tx0", "type", "veth", "peer", "name", "rx0")
	ns.MustRun(t, "ip", "link", "set", "tx0", "up")
	ns.MustRun(t, "ip", "link", "set", "rx0", "up")
	// Keep the kernel's own IPv6 chatter off the link.
	ns.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")

	mac := net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}
	var pass, drop [][]byte
	for _, vlan := range []uint16{0, 5} {
		r, _ := frame.RARP(mac, vlan)
		g, _ := frame.GARP(mac, netip.MustParseAddr("192.0.2.1"), vlan)
		n, _ := frame.NA(mac, netip.MustParseAddr("2001:db8::1"), vlan)
		pass = append(pass, r, g, n)
		tag := len(g) - 60
		drop = append(drop,
			edit(g, func(b []byte) { b[41+tag]++ }),       // ARP request
			edit(n, func(b []byte) { b[58+tag] |= 0x40 }), // solicited NA
			edit(n, func(b []byte) { b[54+tag] = 135 }),   // neighbour solicitation
		)
	}

	var s *Sniffer
	var tx *packet.Conn
	err := ns.Do(func() error {
		var err error
		if s, err = Open([]string{"rx0"}); err != nil {
			return err
		}
		ifi, err := net.InterfaceByName("tx0")
		if err != nil {
			return err
		}
		tx, err = packet.Listen(ifi, packet.Raw, 0, nil)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	defer tx.Close()
	if _, err := s.socks[0].pc.Stats(); err != nil { // reading resets the counters
		t.Fatal(err)
	}
	for _, b := range append(drop, pass...) {
		if _, err := tx.WriteTo(b, &packet.Addr{HardwareAddr: b[:6]}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	st, err := s.socks[0].pc.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Packets != uint32(len(pass)) {
		t.Errorf("kernel queued %d frames, want the %d announcements only", st.Packets, len(pass))
	}
}
