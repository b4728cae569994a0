package ovs

import (
	"net"
	"strings"
	"testing"
)

func ptr[T any](v T) *T { return &v }

func rows() ([]bridgeRow, []portRow, []ifaceRow) {
	bridges := []bridgeRow{
		{UUID: "b1", Name: "xenbr0", Ports: []string{"p1", "p2", "p3"}},
		{UUID: "b2", Name: "br-int", Ports: []string{"p4"}, DatapathType: "netdev"},
	}
	ports := []portRow{
		{UUID: "p1", Name: "vif3.0", Interfaces: []string{"i1"}, Tag: ptr(5)},
		{UUID: "p2", Name: "bond0", Interfaces: []string{"i2", "i3"}, Trunks: []int{30, 10, 20}},
		{UUID: "p3", Name: "tap3.0", Interfaces: []string{"i4"}, VLANMode: ptr("access"), Tag: ptr(7)},
		{UUID: "p4", Name: "vnet0", Interfaces: []string{"i5"}},
		// Not referenced by any bridge (transaction half applied).
		{UUID: "p9", Name: "orphan", Interfaces: []string{"i9"}},
	}
	ifaces := []ifaceRow{
		{UUID: "i1", Name: "vif3.0", OFPort: ptr(4), LinkState: ptr("up"), AdminState: ptr("up"),
			ExternalIDs: map[string]string{"attached-mac": "52:54:00:12:34:56", "xs-vm-uuid": "x"}},
		{UUID: "i2", Name: "eth0", OFPort: ptr(1), LinkState: ptr("up"), AdminState: ptr("up")},
		{UUID: "i3", Name: "eth1", OFPort: ptr(2), LinkState: ptr("down"), AdminState: ptr("up")},
		// Multicast attached-mac is ignored; ofport still unassigned.
		{UUID: "i4", Name: "tap3.0", Type: "tap", ExternalIDs: map[string]string{"attached-mac": "01:00:5e:00:00:01"}},
		{UUID: "i5", Name: "vnet0", OFPort: ptr(-1), LinkState: ptr("up"), AdminState: ptr("down"),
			ExternalIDs: map[string]string{"attached-mac": "FE:54:00:AB:CD:EF"}},
		{UUID: "i9", Name: "orphan", OFPort: ptr(9)},
		// Referenced by no port at all.
		{UUID: "i10", Name: "loose"},
	}
	return bridges, ports, ifaces
}

func TestBuildPorts(t *testing.T) {
	got, unknown := buildPorts(rows())
	want := []Port{
		{Bridge: "br-int", Datapath: "netdev", Name: "vnet0", PortName: "vnet0", OFPort: -1,
			MAC: net.HardwareAddr{0xfe, 0x54, 0, 0xab, 0xcd, 0xef}, LinkUp: true, IfaceUUID: "i5"},
		{Bridge: "xenbr0", Name: "eth0", PortName: "bond0", OFPort: 1, Trunks: []int{10, 20, 30},
			LinkUp: true, AdminUp: true, IfaceUUID: "i2"},
		{Bridge: "xenbr0", Name: "eth1", PortName: "bond0", OFPort: 2, Trunks: []int{10, 20, 30},
			AdminUp: true, IfaceUUID: "i3"},
		{Bridge: "xenbr0", Name: "tap3.0", PortName: "tap3.0", Type: "tap", Tag: 7, VLANMode: "access", IfaceUUID: "i4"},
		{Bridge: "xenbr0", Name: "vif3.0", PortName: "vif3.0", OFPort: 4,
			MAC: net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}, Tag: 5, LinkUp: true, AdminUp: true, IfaceUUID: "i1"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d ports: %v", len(got), got)
	}
	for i := range want {
		if !got[i].Equal(want[i]) {
			t.Errorf("port %d:\n got %+v\nwant %+v", i, got[i], want[i])
		}
	}
	if unknown["tap3.0"] != linkUnknown|adminUnknown || unknown["vif3.0"] != 0 || len(unknown) != 1 {
		t.Errorf("unknown = %v", unknown)
	}
	ready := map[string]bool{"vif3.0": true, "eth0": true}
	for _, p := range got {
		if p.Ready() != ready[p.Name] {
			t.Errorf("%s: Ready() = %v", p.Name, p.Ready())
		}
	}
}

func TestAttachedMAC(t *testing.T) {
	for s, ok := range map[string]bool{
		"52:54:00:12:34:56": true, "fe:ff:ff:ff:ff:ff": true, "": false, "garbage": false,
		"ff:ff:ff:ff:ff:ff": false, "33:33:00:00:00:01": false, "00:00:00:00:00:00": false,
		"00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01": false,
	} {
		if got := attachedMAC(s) != nil; got != ok {
			t.Errorf("attachedMAC(%q) valid=%v, want %v", s, got, ok)
		}
	}
}

func TestDiff(t *testing.T) {
	first, _ := buildPorts(rows())
	old := index(first)

	// Identical state (a reconnect that changed nothing): no events, even
	// though the slices inside are fresh copies.
	again, _ := buildPorts(rows())
	if evs := diff(old, again); len(evs) != 0 {
		t.Fatalf("unchanged state gave events: %v", evs)
	}

	b, p, i := rows()
	i[3].OFPort, i[3].LinkState, i[3].AdminState = ptr(6), ptr("up"), ptr("up") // tap3.0 becomes ready
	p[0].Tag = ptr(6)                                                           // vif3.0 moves VLAN
	b[1].Ports = nil                                                            // vnet0 goes away
	b[0].Ports = append(b[0].Ports, "p9")                                       // orphan joins xenbr0
	i[0].ExternalIDs["xs-vm-uuid"] = "y"                                        // not a Port field
	cur, _ := buildPorts(b, p, i)
	evs := diff(old, cur)

	var got []string
	for _, e := range evs {
		got = append(got, e.String())
	}
	want := []string{
		"deleted br-int/vnet0",
		"new xenbr0/orphan ofport=9",
		"changed xenbr0/tap3.0 ofport=6",
		"changed xenbr0/vif3.0 ofport=4 mac=52:54:00:12:34:56 tag=6",
	}
	if len(got) != len(want) {
		t.Fatalf("events:\n%s", strings.Join(got, "\n"))
	}
	for k := range want {
		if !strings.HasPrefix(got[k], want[k]) {
			t.Errorf("event %d: %q, want prefix %q", k, got[k], want[k])
		}
	}
	if e := evs[2]; e.Prev == nil || e.Prev.Ready() || !e.Port.Ready() {
		t.Errorf("tap3.0 should go from not ready to ready: %+v", e)
	}
	if e := evs[3]; e.Prev == nil || e.Prev.Tag != 5 {
		t.Errorf("vif3.0 Prev should carry the old tag: %+v", e)
	}
}

func TestCheckAddr(t *testing.T) {
	for addr, ok := range map[string]bool{
		"unix:/var/run/openvswitch/db.sock": true, "tcp:127.0.0.1:6640": true, "tcp:[::1]:6640": true,
		"unix:": false, "tcp:host": false, "/var/run/openvswitch/db.sock": false, "ssl:1.2.3.4:6640": false,
	} {
		if err := CheckAddr(addr); (err == nil) != ok {
			t.Errorf("CheckAddr(%q) = %v", addr, err)
		}
	}
}

// After an ovsdb-server restart the ephemeral link_state/admin_state are
// empty until ovs-vswitchd rewrites them: that must not read as a flap.
func TestCarryEphemeral(t *testing.T) {
	first, _ := buildPorts(rows())
	old := index(first)

	b, p, i := rows()
	i[0].LinkState, i[0].AdminState = nil, nil // vif3.0: same row, state lost
	i[1].LinkState = nil                       // eth0: link unknown only
	i[1].AdminState = ptr("down")              // ...but admin really changed
	cur, unknown := buildPorts(b, p, i)
	carryEphemeral(old, cur, unknown)
	evs := diff(old, cur)
	if len(evs) != 1 || evs[0].Port.Name != "eth0" || evs[0].Port.AdminUp || !evs[0].Port.LinkUp {
		t.Fatalf("events %v", evs)
	}

	// A re-plugged interface (new row UUID) does not inherit.
	b, p, i = rows()
	i[0].UUID, i[0].LinkState, i[0].AdminState = "i1-new", nil, nil
	p[0].Interfaces = []string{"i1-new"}
	cur, unknown = buildPorts(b, p, i)
	carryEphemeral(old, cur, unknown)
	if v, _ := Find(cur, "vif3.0"); v.Ready() {
		t.Fatalf("re-plugged vif3.0 inherited readiness: %+v", v)
	}
}
