//go:build linux

package openflow_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/announce/openflow"
	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/ovstest"
	"github.com/selfannounce/selfannounce/internal/testenv"
	"github.com/selfannounce/selfannounce/internal/wiretest"
)

var guestMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0xaa, 0xbb, 0x05}

// rarp builds QEMU's announce-self frame: 60 bytes, broadcast, ethertype
// 0x8035, reverse request with sender = target = mac and zero addresses.
func rarp(mac net.HardwareAddr) []byte {
	b := make([]byte, 60)
	copy(b[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(b[6:12], mac)
	binary.BigEndian.PutUint16(b[12:], 0x8035)
	binary.BigEndian.PutUint16(b[14:], 1)      // htype Ethernet
	binary.BigEndian.PutUint16(b[16:], 0x0800) // ptype IPv4
	b[18], b[19] = 6, 4
	binary.BigEndian.PutUint16(b[20:], 3) // reverse request
	copy(b[22:28], mac)
	copy(b[32:38], mac)
	return b
}

// lab is an OVS host with a trunk to a "switch" namespace and one guest
// VIF on access VLAN 5.
type lab struct {
	ovs       *ovstest.OVS
	host, sw  *netlab.NS
	guest     *netlab.NS
	vifOFPort int
}

func newLab(t *testing.T) *lab {
	testenv.RequireRoot(t)
	l := &lab{
		host:  netlab.TestNS(t, "ofh"),
		sw:    netlab.TestNS(t, "ofsw"),
		guest: netlab.TestNS(t, "ofg"),
	}
	for _, ns := range []*netlab.NS{l.host, l.sw, l.guest} {
		// Silence IPv6 autoconfiguration chatter on the captured links.
		ns.Run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	}
	l.host.MustRun(t, "ip", "link", "add", "trunk0", "type", "veth", "peer", "name", "sw0", "netns", l.sw.Name)
	l.host.MustRun(t, "ip", "link", "add", "vif1.0", "type", "veth", "peer", "name", "eth0", "netns", l.guest.Name)
	l.host.MustRun(t, "ip", "link", "set", "trunk0", "up")
	l.host.MustRun(t, "ip", "link", "set", "vif1.0", "up")
	l.sw.MustRun(t, "ip", "link", "set", "sw0", "up")
	l.guest.MustRun(t, "ip", "link", "set", "eth0", "up")
	l.ovs = ovstest.Start(t, l.host)
	l.ovs.AddBridge(t, "br0")
	l.ovs.Vsctl(t, "add-port", "br0", "trunk0")
	l.ovs.Vsctl(t, "add-port", "br0", "vif1.0", "tag=5", "--",
		"set", "Interface", "vif1.0", "external_ids:attached-mac="+guestMAC.String())
	l.vifOFPort = l.ovs.OFPort(t, "vif1.0")
	return l
}

// capture records the frames a link receives (not those its namespace
// sends).
type capture struct{ *wiretest.Capture }

func openCapture(t *testing.T, ns *netlab.NS, ifname string) capture {
	t.Helper()
	return capture{wiretest.Start(t, ns, ifname, wiretest.In)}
}

// find returns the first received frame that match accepts, or false at
// the deadline.
func (c capture) find(t *testing.T, d time.Duration, match func(wiretest.Frame) bool) (wiretest.Frame, bool) {
	t.Helper()
	if fs := c.WaitFor(d, 1, match); len(fs) > 0 {
		return fs[0], true
	}
	return wiretest.Frame{}, false
}

func isRARPFrom(mac net.HardwareAddr) func(wiretest.Frame) bool {
	return func(r wiretest.Frame) bool {
		return r.EtherType() == 0x8035 && bytes.Equal(r.Src(), mac)
	}
}

// fdbHas reports whether `ovs-appctl fdb/show` lists mac on ofport in vlan.
func fdbHas(out string, ofport, vlan int, mac net.HardwareAddr) bool {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == strconv.Itoa(ofport) && f[1] == strconv.Itoa(vlan) && strings.EqualFold(f[2], mac.String()) {
			return true
		}
	}
	return false
}

func dial(t *testing.T, l *lab) *openflow.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := openflow.Dial(ctx, openflow.MgmtSocket(l.ovs.RunDir(), "br0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// A packet-out with in_port = the VIF and actions=NORMAL leaves the trunk
// tagged with the VIF's VLAN and teaches OVS the guest MAC on the VIF,
// exactly as if the guest had sent it; the guest does not hear it back.
func TestPacketOutNormal(t *testing.T) {
	l := newLab(t)
	for _, tc := range []struct {
		protocols string
		version   uint8
	}{
		{"OpenFlow10", openflow.Version10},
		{"OpenFlow13", openflow.Version13},
		{"OpenFlow10,OpenFlow13", openflow.Version13},
	} {
		t.Run(tc.protocols, func(t *testing.T) {
			l.ovs.Vsctl(t, "set", "Bridge", "br0", "protocols="+tc.protocols)
			l.ovs.Appctl(t, "fdb/flush", "br0")
			trunk := openCapture(t, l.sw, "sw0")
			guest := openCapture(t, l.guest, "eth0")

			c := dial(t, l)
			if c.Version() != tc.version {
				t.Fatalf("negotiated %#x, want %#x", c.Version(), tc.version)
			}
			want := rarp(guestMAC)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := c.PacketOutSync(ctx, uint32(l.vifOFPort), openflow.Action{}, want); err != nil {
				t.Fatal(err)
			}

			got, ok := trunk.find(t, 3*time.Second, isRARPFrom(guestMAC))
			if !ok {
				t.Fatal("no RARP from the guest MAC on the trunk")
			}
			if got.VLAN != 5 {
				t.Fatalf("RARP left the trunk with VLAN %d, want 5", got.VLAN)
			}
			t.Logf("VLAN tag read from auxdata: %v", got.TagFromAux)
			if !bytes.Equal(got.Untagged(), want) {
				t.Fatalf("frame changed on the way:\n got %x\nwant %x", got.Untagged(), want)
			}
			if r, ok := guest.find(t, 300*time.Millisecond, isRARPFrom(guestMAC)); ok {
				t.Fatalf("guest heard its own announcement: %x", r.Untagged())
			}
			fdb := l.ovs.Appctl(t, "fdb/show", "br0")
			if !fdbHas(fdb, l.vifOFPort, 5, guestMAC) {
				t.Fatalf("OVS did not learn %s on port %d VLAN 5:\n%s", guestMAC, l.vifOFPort, fdb)
			}
		})
	}
}

// Resubmit skips table 0 (where NORMAL lives on a standalone bridge) and
// runs the frame through table 1, with in_port still the VIF.
func TestPacketOutResubmit(t *testing.T) {
	l := newLab(t)
	trunkPort := l.ovs.OFPort(t, "trunk0")
	l.ovs.Ofctl(t, "add-flow", "br0",
		"table=1,priority=100,in_port="+strconv.Itoa(l.vifOFPort)+",actions=mod_vlan_vid:7,output:"+strconv.Itoa(trunkPort))
	trunk := openCapture(t, l.sw, "sw0")
	c := dial(t, l)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.PacketOutSync(ctx, uint32(l.vifOFPort), openflow.Action{Resubmit: true, Table: 1}, rarp(guestMAC)); err != nil {
		t.Fatal(err)
	}
	got, ok := trunk.find(t, 3*time.Second, isRARPFrom(guestMAC))
	if !ok {
		t.Fatal("no RARP on the trunk after resubmit to table 1")
	}
	if got.VLAN != 7 {
		t.Fatalf("VLAN %d: the frame did not go through table 1's flow (want 7)", got.VLAN)
	}
	// Table 1 matched in_port, so the packet-out's in_port survived the resubmit.
	if fdb := l.ovs.Appctl(t, "fdb/show", "br0"); fdbHas(fdb, l.vifOFPort, 5, guestMAC) {
		t.Fatalf("NORMAL ran although only table 1 should have:\n%s", fdb)
	}
}

// The switch's rejection of a packet-out comes back as an *openflow.Error,
// synchronously from PacketOutSync and later from Flush for PacketOut.
func TestPacketOutErrors(t *testing.T) {
	l := newLab(t)
	c := dial(t, l)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if c.Version() != openflow.Version13 {
		t.Fatalf("negotiated %#x; this test needs OpenFlow 1.3", c.Version())
	}
	// OVS does not check that in_port exists: a stale ofport is accepted
	// silently, so callers must take it fresh from OVSDB.
	if err := c.PacketOutSync(ctx, 4000, openflow.Action{}, rarp(guestMAC)); err != nil {
		t.Fatalf("packet-out from an unused port number: %v", err)
	}
	// OVS's own port numbers stop at 0xff00; OpenFlow 1.3 numbers between
	// that and the reserved ports are valid on the wire but refused by OVS
	// with BAD_ACTION/BAD_OUT_PORT, which makes a dependable rejection.
	const outOfRange = 0x10000
	err := c.PacketOutSync(ctx, outOfRange, openflow.Action{}, rarp(guestMAC))
	var oerr *openflow.Error
	if !errors.As(err, &oerr) {
		t.Fatalf("packet-out from port %#x: got %v, want *openflow.Error", outOfRange, err)
	}
	t.Logf("in_port %#x: %v", outOfRange, err)

	if err := c.PacketOut(outOfRange, openflow.Action{}, rarp(guestMAC)); err != nil {
		t.Fatal(err)
	}
	if err := c.PacketOut(uint32(l.vifOFPort), openflow.Action{}, rarp(guestMAC)); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); !errors.As(err, &oerr) {
		t.Fatalf("Flush after a bad packet-out: got %v, want *openflow.Error", err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatalf("second Flush reports stale errors: %v", err)
	}
}

// A restart of ovs-vswitchd ends the session visibly, and a new Dial works.
func TestSwitchRestart(t *testing.T) {
	l := newLab(t)
	c := dial(t, l)
	l.ovs.RestartSwitch(t)
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("session survived ovs-vswitchd restart")
	}
	if err := c.PacketOut(uint32(l.vifOFPort), openflow.Action{}, rarp(guestMAC)); !errors.Is(err, openflow.ErrClosed) {
		t.Fatalf("PacketOut on a dead session: %v", err)
	}
	ofport := l.ovs.OFPort(t, "vif1.0")
	c2 := dial(t, l)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c2.PacketOutSync(ctx, uint32(ofport), openflow.Action{}, rarp(guestMAC)); err != nil {
		t.Fatal(err)
	}
}
