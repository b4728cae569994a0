//go:build linux

package oneshot_test

import (
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/wiretest"
)

// neighbourMAC is another VM's, on the same host bridge.
const neighbourMAC = "52:54:00:77:88:99"

// TestSpoofedNeighbourMACMovesNothing: a guest (or a wrong --mac) claims
// the MAC of a neighbour VM that lives on another live port of the same
// bridge. The repair refuses, the one-shot exits with the refusal, and
// neither the host bridge nor the switch moves: not one frame with that
// MAC leaves through the uplink.
func TestSpoofedNeighbourMACMovesNothing(t *testing.T) {
	l := newLab(t)
	// The neighbour lives behind vnet7: its frames teach br0 (vnet7) and,
	// through the uplink, the switch (sw0).
	m := mustMAC(t, neighbourMAC)
	teach := make([]byte, 60)
	copy(teach, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(teach[6:], m)
	binary.BigEndian.PutUint16(teach[12:], etherTypeTeach)
	eventually(t, 5*time.Second, func() error {
		inject(t, l.host, "vnet7p", teach)
		time.Sleep(20 * time.Millisecond)
		if port := fdbPort(t, l.host, "br0", neighbourMAC); port != "vnet7" {
			return fmt.Errorf("host bridge has %s on %q, want vnet7", neighbourMAC, port)
		}
		if port := fdbPort(t, l.sw, "swbr", neighbourMAC); port != "sw0" {
			return fmt.Errorf("switch has %s on %q, want sw0", neighbourMAC, port)
		}
		return nil
	})
	sw := startCapture(t, l.sw, "sw0")
	r := l.announce(t, "--vif", "vif3.0", "--mac", neighbourMAC, "--ip", "10.0.0.77")
	onWire := sw.Stop(t)
	if r.Code == 0 {
		t.Fatalf("announce for a neighbour's MAC exited 0: %s", r.Stderr)
	}
	if !strings.Contains(r.Stderr, `live port "vnet7"`) {
		t.Errorf("announce's error does not name the neighbour's port: %s", r.Stderr)
	}
	if f := from(onWire, m); len(f) != 0 {
		t.Errorf("the switch received %d frames from %s, want none:%s", len(f), neighbourMAC, describe(f))
	}
	if port := fdbPort(t, l.host, "br0", neighbourMAC); port != "vnet7" {
		t.Errorf("host bridge FDB has %s on %q, want it still on vnet7", neighbourMAC, port)
	}
	if port := fdbPort(t, l.sw, "swbr", neighbourMAC); port != "sw0" {
		t.Errorf("switch FDB has %s on %q, want sw0", neighbourMAC, port)
	}
}

// stpLab is a host whose bridge br0 has two uplinks to one switch, a loop
// that spanning tree breaks by blocking one of them:
//
//	host ns: br0 (STP) = {up0, up1, vif3.0}; vif3.0 ── eth0 (guest ns)
//	switch ns: swbr (STP, root) = {sw0 ── up0, sw1 ── up1}
func newSTPLab(t *testing.T) *lab {
	l := newLab(t) // for the binary and the hermetic flags only
	l.host = netlab.TestNS(t, "stphost")
	l.sw = netlab.TestNS(t, "stpsw")
	l.guest = netlab.TestNS(t, "stpguest")
	for _, ns := range []*netlab.NS{l.host, l.sw, l.guest} {
		ns.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	}
	mustSh(t, l.sw, `
ip link add swbr type bridge stp_state 1 priority 0 forward_delay 200 hello_time 100
ip link set swbr up
`)
	mustSh(t, l.host, fmt.Sprintf(`
ip link add br0 type bridge stp_state 1 priority 61440 forward_delay 200 hello_time 100
ip link add up0 type veth peer name sw0
ip link add up1 type veth peer name sw1
ip link set sw0 netns %[1]s
ip link set sw1 netns %[1]s
ip link add vif3.0 address fe:ff:ff:ff:ff:ff type veth peer name eth0 address %[3]s
ip link set eth0 netns %[2]s
ip link set up0 master br0
ip link set up1 master br0
ip link set vif3.0 master br0
for d in br0 up0 up1 vif3.0; do ip link set $d up; done
`, l.sw.Name, l.guest.Name, guestMAC))
	mustSh(t, l.sw, `
ip link set sw0 master swbr
ip link set sw1 master swbr
ip link set sw0 up
ip link set sw1 up
`)
	l.guest.MustRun(t, "ip", "link", "set", "eth0", "up")
	return l
}

// TestBlockedUplinkCarriesNothing: announcements leave only through the
// uplink that forwards. A frame written on the blocked one would teach
// the switch that the guest sits behind a port the bridge does not use.
// With no uplink forwarding, the one-shot fails with a clear error and
// sends nothing.
func TestBlockedUplinkCarriesNothing(t *testing.T) {
	l := newSTPLab(t)
	var fwd, blocked string
	eventually(t, 30*time.Second, func() error {
		s0, err0 := wiretest.BrportState(l.host, "up0")
		s1, err1 := wiretest.BrportState(l.host, "up1")
		switch {
		case err0 != nil || err1 != nil:
			return fmt.Errorf("brport state: %v %v", err0, err1)
		case s0 == 3 && s1 == 4:
			fwd, blocked = "up0", "up1"
		case s0 == 4 && s1 == 3:
			fwd, blocked = "up1", "up0"
		default:
			return fmt.Errorf("spanning tree has not converged: up0 state %d, up1 state %d", s0, s1)
		}
		return nil
	})
	peer := map[string]string{"up0": "sw0", "up1": "sw1"}
	t.Logf("STP: %s forwarding, %s blocking", fwd, blocked)

	g := mustMAC(t, guestMAC)
	capFwd := startCapture(t, l.sw, peer[fwd])
	capBlk := startCapture(t, l.sw, peer[blocked])
	r := l.announce(t, "--vif", "vif3.0", "--mac", guestMAC, "--ip", "10.0.0.10")
	onFwd, onBlk := capFwd.Stop(t), capBlk.Stop(t)
	if r.Code != 0 {
		t.Fatalf("announce exited %d: %s", r.Code, r.Stderr)
	}
	if f := from(onFwd, g); len(f) != 10 {
		t.Errorf("forwarding uplink %s carried %d frames from the guest, want 10 (5 rounds of RARP+GARP):%s", fwd, len(f), describe(f))
	}
	if f := from(onBlk, g); len(f) != 0 {
		t.Errorf("blocked uplink %s carried %d frames from the guest, want none:%s", blocked, len(f), describe(f))
	}

	// No uplink forwards: both lose carrier.
	l.sw.MustRun(t, "ip", "link", "set", "sw0", "down")
	l.sw.MustRun(t, "ip", "link", "set", "sw1", "down")
	eventually(t, 5*time.Second, func() error {
		for _, u := range []string{"up0", "up1"} {
			if s, err := wiretest.BrportState(l.host, u); err != nil || s != 0 {
				return fmt.Errorf("%s: state %d %v, want disabled", u, s, err)
			}
		}
		return nil
	})
	cap0 := wiretest.Start(t, l.host, "up0", wiretest.Out)
	cap1 := wiretest.Start(t, l.host, "up1", wiretest.Out)
	r = l.announce(t, "--vif", "vif3.0", "--mac", guestMAC, "--ip", "10.0.0.10")
	out0, out1 := cap0.Stop(t), cap1.Stop(t)
	if r.Code == 0 {
		t.Fatalf("announce with no forwarding uplink exited 0: %s", r.Stderr)
	}
	if !strings.Contains(r.Stderr, `has no forwarding uplink (up0: no carrier, up1: no carrier)`) {
		t.Errorf("announce's error does not say why no uplink is used: %s", r.Stderr)
	}
	if f := append(from(out0, g), from(out1, g)...); len(f) != 0 {
		t.Errorf("%d frames from the guest left with no forwarding uplink:%s", len(f), describe(f))
	}
}
