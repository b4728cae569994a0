package linuxbr

import (
	"errors"
	"net"
	"reflect"
	"strings"
	"testing"
)

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func link(name string, idx int) Link {
	return Link{Name: name, Index: idx, MAC: net.HardwareAddr{0x02, 0, 0, 0, 0, byte(idx)}}
}

// xenHost is a XenServer-like dom0: xenbr0 over eth0 with two vifs and an
// HVM tap, a second bridge with only guests, a vif on the OVS datapath, a
// bond member and a lone NIC.
func xenHost() StaticHost {
	return StaticHost{
		{Link: link("eth0", 2), Kind: KindVeth, Master: "xenbr0"},
		{Link: link("xenbr0", 3), Kind: KindBridge},
		{Link: link("vif3.0", 4), Master: "xenbr0"},
		{Link: link("vif4.0", 5), Master: "xenbr0"},
		{Link: link("tap4.0", 6), Kind: KindTun, Master: "xenbr0"},
		{Link: link("guestbr", 7), Kind: KindBridge},
		{Link: link("vif5.0", 8), Master: "guestbr"},
		{Link: link("vnet0", 9), Kind: KindTun, Master: "guestbr"},
		{Link: link("ovs-system", 10), Kind: KindOpenvSwitch},
		{Link: link("vif6.0", 11), Master: "ovs-system"},
		{Link: link("bond0", 12), Kind: KindBond},
		{Link: link("eth1", 13), Master: "bond0"},
		{Link: link("eth2", 14)},
		{Link: link("xapi0", 15), Kind: KindOpenvSwitch},
		{Link: link("vif7.0", 16), Master: "xapi0"},
	}
}

func TestResolvePlainBridge(t *testing.T) {
	p, err := Resolve(xenHost(), "vif3.0", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := &Path{
		Port:    link("vif3.0", 4),
		Bridge:  link("xenbr0", 3),
		Uplinks: []Uplink{{Link: link("eth0", 2)}},
	}
	if !reflect.DeepEqual(p, want) {
		t.Fatalf("got %+v\nwant %+v", p, want)
	}
}

func TestResolveErrors(t *testing.T) {
	for _, tc := range []struct {
		port    string
		vmPorts []string
		want    error
		msg     string
	}{
		{"vif9.0", nil, ErrNotFound, `interface "vif9.0" does not exist`},
		{"eth2", nil, ErrNotBridgePort, `interface "eth2" is not a bridge port (it has no master)`},
		{"eth1", nil, ErrNotBridgePort, `interface "eth1" is not a bridge port (its master "bond0" is a bond)`},
		{"vif6.0", nil, ErrOVSPort, `interface "vif6.0" is an Open vSwitch port, not a Linux bridge port (master ovs-system)`},
		{"vif7.0", nil, ErrOVSPort, `interface "vif7.0" is an Open vSwitch port`},
		{"vif5.0", nil, ErrNoUplink, `bridge "guestbr" has no uplink (every port matches vif*, tap*, vnet*)`},
		// With custom patterns the VM port itself must still never be an uplink.
		{"vif5.0", []string{"vnet*"}, ErrNoUplink, `bridge "guestbr" has no uplink`},
	} {
		_, err := Resolve(xenHost(), tc.port, tc.vmPorts)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.port, err, tc.want)
			continue
		}
		if !strings.HasPrefix(err.Error(), tc.msg) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: message %q, want one line starting %q", tc.port, err, tc.msg)
		}
	}
}

func TestResolveBadInput(t *testing.T) {
	for _, tc := range []struct {
		port    string
		vmPorts []string
		msg     string
	}{
		{"../../etc", nil, `invalid interface name "../../etc" (contains '/', ':' or whitespace)`},
		{"", nil, "empty interface name"},
		{"averyveryverylongname", nil, `interface name "averyveryverylongname" is longer than 15 bytes`},
		{"vif3.0", []string{"vif["}, `VM port pattern "vif[" is malformed`},
	} {
		_, err := Resolve(xenHost(), tc.port, tc.vmPorts)
		if err == nil || err.Error() != tc.msg {
			t.Errorf("Resolve(%q, %q): got %v, want %q", tc.port, tc.vmPorts, err, tc.msg)
		}
	}
}

func TestResolveCustomVMPorts(t *testing.T) {
	// An operator who names guest ports "guest*" makes tap4.0 an uplink.
	p, err := Resolve(xenHost(), "vif3.0", []string{"vif*"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range p.Uplinks {
		names = append(names, u.Name)
	}
	if want := []string{"eth0", "tap4.0"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("uplinks %v, want %v", names, want)
	}
}

// vlanHost is a VLAN-aware bridge: the guest on PVID 10; bond0 trunks 10
// tagged, eth3 carries 10 untagged (access port), eth4 is only on 20, and
// eth5.7 is an 802.1Q device carrying 10 tagged.
func vlanHost() StaticHost {
	return StaticHost{
		{Link: link("br0", 1), Kind: KindBridge, VLANFiltering: true},
		{Link: link("bond0", 2), Kind: KindBond, Master: "br0",
			VLANs: []VLAN{{ID: 1, PVID: true, Untagged: true}, {ID: 10}, {ID: 20}}},
		{Link: link("eth3", 3), Kind: KindVeth, Master: "br0",
			VLANs: []VLAN{{ID: 10, PVID: true, Untagged: true}}},
		{Link: link("eth4", 4), Kind: KindVeth, Master: "br0",
			VLANs: []VLAN{{ID: 20, PVID: true, Untagged: true}}},
		{Link: link("eth5.7", 5), Kind: KindVLAN, Master: "br0",
			VLANs: []VLAN{{ID: 10}}},
		{Link: link("vnet0", 6), Kind: KindTun, Master: "br0",
			VLANs: []VLAN{{ID: 10, PVID: true, Untagged: true}}},
		{Link: link("vnet1", 7), Kind: KindTun, Master: "br0",
			VLANs: []VLAN{{ID: 10, Untagged: true}}},
		{Link: link("vnet2", 8), Kind: KindTun, Master: "br0",
			VLANs: []VLAN{{ID: 30, PVID: true, Untagged: true}}},
	}
}

func TestResolveVLANFiltering(t *testing.T) {
	p, err := Resolve(vlanHost(), "vnet0", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := &Path{
		Port:          link("vnet0", 6),
		Bridge:        link("br0", 1),
		VLAN:          10,
		VLANFiltering: true,
		Uplinks: []Uplink{
			{Link: link("bond0", 2), VLAN: 10},
			{Link: link("eth3", 3), VLAN: 0},
			{Link: link("eth5.7", 5), VLAN: 0},
		},
	}
	if !reflect.DeepEqual(p, want) {
		t.Fatalf("got %+v\nwant %+v", p, want)
	}
}

func TestResolveVLANErrors(t *testing.T) {
	_, err := Resolve(vlanHost(), "vnet1", nil)
	if !errors.Is(err, ErrNoPVID) || !strings.HasPrefix(err.Error(), `interface "vnet1" has no PVID on VLAN-filtering bridge "br0"`) {
		t.Errorf("vnet1: %v", err)
	}
	_, err = Resolve(vlanHost(), "vnet2", nil)
	if !errors.Is(err, ErrNoUplink) || err.Error() != `bridge "br0" has no uplink on VLAN 30 (bond0, eth3, eth4, eth5.7 not a member)` {
		t.Errorf("vnet2: %v", err)
	}
}

func TestResolveNoFilteringIgnoresVLANTable(t *testing.T) {
	h := vlanHost()
	h[0].VLANFiltering = false
	p, err := Resolve(h, "vnet2", nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.VLAN != 0 || p.VLANFiltering || len(p.Uplinks) != 4 {
		t.Fatalf("got %+v", p)
	}
	for _, u := range p.Uplinks {
		if u.VLAN != 0 {
			t.Errorf("uplink %s tagged %d on a bridge without VLAN filtering", u.Name, u.VLAN)
		}
	}
}

// Uplinks without carrier or not forwarding are left out; with none left,
// Resolve says why each is unusable.
func TestResolveSkipsUplinksThatDoNotForward(t *testing.T) {
	h := StaticHost{
		{Link: link("br0", 1), Kind: KindBridge},
		{Link: link("eth0", 2), Kind: KindVeth, Master: "br0", STP: BRBlocking},
		{Link: link("eth1", 3), Kind: KindVeth, Master: "br0", STP: BRForwarding},
		{Link: link("eth2", 4), Kind: KindVeth, Master: "br0", Down: true},
		{Link: link("eth3", 5), Kind: KindVeth, Master: "br0", STP: BRLearning},
		{Link: link("vif1.0", 6), Master: "br0", STP: BRForwarding},
	}
	p, err := Resolve(h, "vif1.0", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Uplinks) != 1 || p.Uplinks[0].Name != "eth1" {
		t.Errorf("uplinks %+v, want only eth1", p.Uplinks)
	}
	var why []string
	for _, u := range p.Unusable {
		why = append(why, u.Name+": "+u.Why)
	}
	if want := []string{"eth0: STP blocking", "eth2: no carrier", "eth3: STP learning"}; !reflect.DeepEqual(why, want) {
		t.Errorf("unusable %v, want %v", why, want)
	}

	h[2].STP = BRDisabled
	h[2].Down = true
	_, err = Resolve(h, "vif1.0", nil)
	const msg = `bridge "br0" has no forwarding uplink (eth0: STP blocking, eth1: no carrier, eth2: no carrier, eth3: STP learning)`
	if !errors.Is(err, ErrNoForwardingUplink) || !errors.Is(err, ErrNoUplink) || err.Error() != msg {
		t.Errorf("Resolve with no forwarding uplink = %v, want %q", err, msg)
	}
}

// A TableHost without port states (a caller that does not fill them) takes
// every uplink to forward; with them, it skips as the others do.
func TestTableHostPortState(t *testing.T) {
	links := []TableLink{
		{Link: link("br0", 1), Kind: KindBridge},
		{Link: link("eth0", 2), Kind: KindVeth, Master: 1},
		{Link: link("eth1", 3), Kind: KindVeth, Master: 1, State: PortState{STP: BRBlocking}, HasState: true},
		{Link: link("vif1.0", 4), Master: 1},
	}
	p, err := Resolve(&TableHost{Links: links}, "vif1.0", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Uplinks) != 1 || p.Uplinks[0].Name != "eth0" || len(p.Unusable) != 1 || p.Unusable[0].Name != "eth1" {
		t.Errorf("uplinks %+v unusable %+v, want eth0 and eth1", p.Uplinks, p.Unusable)
	}
}

// A trunk VM port: VLANs the guest tags itself. Each VLAN gets the uplinks
// that carry it, with the tag each needs; a pure trunk has no untagged
// path at all. (On the wire: e2e/kernel TestInVMVlanTrunkVif.)
func TestResolveTrunkPort(t *testing.T) {
	h := append(vlanHost(),
		StaticLink{Link: link("vnet3", 9), Kind: KindTun, Master: "br0",
			VLANs: []VLAN{{ID: 20}, {ID: 10}, {ID: 30}}},
		StaticLink{Link: link("vnet4", 10), Kind: KindTun, Master: "br0",
			VLANs: []VLAN{{ID: 10, PVID: true, Untagged: true}, {ID: 20}}})
	p, err := Resolve(h, "vnet3", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []TaggedVLAN{
		{VLAN: 10, Uplinks: []Uplink{{Link: link("bond0", 2), VLAN: 10}, {Link: link("eth3", 3)}, {Link: link("eth5.7", 5)}}},
		{VLAN: 20, Uplinks: []Uplink{{Link: link("bond0", 2), VLAN: 20}, {Link: link("eth4", 4)}}},
	}
	if len(p.Uplinks) != 0 || !reflect.DeepEqual(p.Tagged, want) {
		t.Errorf("vnet3: uplinks %+v tagged %+v, want none and %+v (VLAN 30 has no uplink)", p.Uplinks, p.Tagged, want)
	}
	p, err = Resolve(h, "vnet4", nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.VLAN != 10 || len(p.Uplinks) != 3 || len(p.Tagged) != 1 || p.Tagged[0].VLAN != 20 {
		t.Errorf("vnet4 (PVID 10, 20 tagged): %+v", p)
	}
}
