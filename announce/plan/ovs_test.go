package plan

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/openflow"
	"github.com/selfannounce/selfannounce/announce/ovs"
	"github.com/selfannounce/selfannounce/announce/schedule"
)

func TestOVSPlan(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0, 1, 2, 3}
	g := announce.Guest{MAC: mac, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.10")}, Source: "ovsdb"}
	ports := StaticPorts{
		{Bridge: "br0", Name: "vif1.0", OFPort: 4, Tag: 5, MAC: mac},
		{Bridge: "br0", Name: "vif2.0", OFPort: 0},
	}
	pool := NewOFPool(nil)
	defer pool.Close()
	o := &OVS{Ports: ports, Pool: pool, RunDir: t.TempDir(), Action: openflow.Action{Resubmit: true, Table: 3}}
	pl, err := o.Plan("vif1.0", g)
	if err != nil {
		t.Fatal(err)
	}
	if pl.Backend != "ovs" || pl.Bridge != "br0" || pl.VLAN != 5 || pl.Repair != nil || len(pl.Packets) != 2 {
		t.Fatalf("plan %+v", pl)
	}
	// Frames go out untagged: OVS tags them for the VIF's VLAN.
	for _, p := range pl.Packets {
		if !bytes.Equal(p.Data[6:12], mac) || p.Data[12] == 0x81 {
			t.Errorf("%s frame % x", p.Kind, p.Data[:16])
		}
	}
	var b strings.Builder
	pl.Describe(&b, schedule.Default())
	for _, want := range []string{"backend ovs", "vlan 5", "ofport 4 actions=resubmit(,3)", "ofport 4 (vif1.0)"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("dry run lacks %q:\n%s", want, b.String())
		}
	}
	if strings.Contains(b.String(), "repair") {
		t.Error("OVS plan describes a bridge repair")
	}

	for port, want := range map[string]string{
		"vif2.0": `interface "vif2.0" on Open vSwitch bridge br0 has no OpenFlow port number yet (ofport 0)`,
		"vif9.0": `interface "vif9.0" is not an Open vSwitch port`,
	} {
		if _, err := o.Plan(port, g); err == nil || err.Error() != want {
			t.Errorf("%s: error %v, want %q", port, err, want)
		}
	}
}

// The writer reads the ofport fresh for every frame: a VIF that vanished
// between plan and send fails its frames rather than using a stale port
// number, which OVS would not refuse.
func TestOVSWriterFreshPort(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0, 1, 2, 3}
	live := &mutablePorts{p: ovs.Port{Bridge: "br0", Name: "vif1.0", OFPort: 4}}
	pool := NewOFPool(nil)
	defer pool.Close()
	o := &OVS{Ports: live, Pool: pool, RunDir: t.TempDir()}
	pl, err := o.Plan("vif1.0", announce.Guest{MAC: mac})
	if err != nil {
		t.Fatal(err)
	}
	live.gone = true
	if err := pl.Packets[0].W.WriteFrame(pl.Packets[0].Data); err == nil || !strings.Contains(err.Error(), "gone") {
		t.Fatalf("write after the port vanished: %v", err)
	}
	live.gone, live.p.OFPort = false, -1
	if err := pl.Packets[0].W.WriteFrame(pl.Packets[0].Data); err == nil || !strings.Contains(err.Error(), "no ofport") {
		t.Fatalf("write on a port without ofport: %v", err)
	}
	// No switch listens in the temporary directory: the error says where.
	live.p.OFPort = 4
	if err := pl.Packets[0].W.WriteFrame(pl.Packets[0].Data); err == nil || !strings.Contains(err.Error(), "br0.mgmt") {
		t.Fatalf("write without a switch: %v", err)
	}
}

type mutablePorts struct {
	p    ovs.Port
	gone bool
}

func (m *mutablePorts) Lookup(name string) (ovs.Port, bool) {
	if m.gone || name != m.p.Name {
		return ovs.Port{}, false
	}
	return m.p, true
}

// What each VLAN mode makes OVS accept from a port, per ofproto-dpif-xlate's
// input check; the frames of the plan follow it (the wire side is
// e2e/kernel's TestInVMOVSTrunkNoNative, on the kernel datapath).
func TestOVSPortVLANs(t *testing.T) {
	for _, tc := range []struct {
		p        ovs.Port
		native   uint16
		nativeOK bool
		tagged   []uint16
	}{
		{ovs.Port{}, 0, true, nil},
		{ovs.Port{Tag: 100}, 100, true, nil},
		{ovs.Port{Trunks: []int{100, 200}}, 0, false, []uint16{100, 200}},
		{ovs.Port{Trunks: []int{0, 100}, VLANMode: "trunk"}, 0, true, []uint16{100}},
		{ovs.Port{Tag: 100, Trunks: []int{200}, VLANMode: "native-untagged"}, 100, true, []uint16{200}},
		{ovs.Port{Tag: 100, Trunks: []int{100, 200}, VLANMode: "native-tagged"}, 100, true, []uint16{200}},
		{ovs.Port{Tag: 100, VLANMode: "dot1q-tunnel"}, 100, true, nil},
	} {
		native, ok, tagged := portVLANs(tc.p)
		if native != tc.native || ok != tc.nativeOK || !slices.Equal(tagged, tc.tagged) {
			t.Errorf("%+v: native %d ok %v tagged %v, want %d %v %v", tc.p, native, ok, tagged, tc.native, tc.nativeOK, tc.tagged)
		}
	}
	mac := net.HardwareAddr{0x52, 0x54, 0, 1, 2, 3}
	g := announce.Guest{MAC: mac, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.10")}}
	pool := NewOFPool(nil)
	defer pool.Close()
	o := &OVS{Ports: StaticPorts{{Bridge: "br0", Name: "vif1.0", OFPort: 4, Trunks: []int{100, 200}}}, Pool: pool, RunDir: t.TempDir()}
	pl, err := o.Plan("vif1.0", g)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range pl.Packets {
		got = append(got, fmt.Sprintf("%s/%x%x", p.Kind, p.Data[12:14], p.Data[14:16]))
	}
	if want := []string{"rarp/81000064", "rarp/810000c8"}; !slices.Equal(got, want) {
		t.Errorf("trunk 100,200 without native VLAN: frames %v, want %v", got, want)
	}
}
