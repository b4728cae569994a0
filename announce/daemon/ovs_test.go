package daemon

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/burst"
	"github.com/selfannounce/selfannounce/announce/config"
	"github.com/selfannounce/selfannounce/announce/netwatch"
	"github.com/selfannounce/selfannounce/announce/ovs"
	"github.com/selfannounce/selfannounce/announce/plan"
)

// sent is what a recording planner's writer saw: which backend planned it,
// for which port and guest.
type sent struct {
	backend string
	port    string
	guest   announce.Guest
}

type recorder struct {
	out chan sent
}

type recPlanner struct {
	r       *recorder
	backend string
}

type recWriter struct {
	r *recorder
	s sent
}

func (w recWriter) WriteFrame([]byte) error { w.r.out <- w.s; return nil }

func (p recPlanner) Plan(port string, g announce.Guest) (*plan.Plan, error) {
	w := recWriter{p.r, sent{p.backend, port, g}}
	return &plan.Plan{Port: port, Backend: p.backend, Guest: g,
		Packets: []burst.Packet{{W: w, Kind: "rarp", Data: []byte{0}}}}, nil
}

var (
	mac1 = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}
	mac2 = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 2}
)

func newOVSDaemon(t *testing.T, yaml string, resolve func(string) (announce.Guest, bool)) (*Daemon, *recorder) {
	t.Helper()
	cfg, err := config.Parse([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Schedule.Rounds = 1
	cfg.FlapHolddown = 0
	rec := &recorder{out: make(chan sent, 64)}
	eng := burst.New(100000, nil)
	t.Cleanup(eng.Close)
	dm := New(cfg, Deps{
		Log:    zap.NewNop(),
		Engine: eng,
		Linux:  recPlanner{rec, "linux"},
		OVS:    recPlanner{rec, "ovs"},
		Resolve: func(_ context.Context, port string) (announce.Guest, bool, error) {
			if resolve == nil {
				return announce.Guest{}, false, nil
			}
			g, ok := resolve(port)
			return g, ok, nil
		},
	})
	t.Cleanup(dm.Close)
	return dm, rec
}

func vport(name string, ready bool) ovs.Port {
	return ovs.Port{Bridge: "br0", Datapath: "netdev", Name: name, PortName: name, OFPort: 7, MAC: mac1,
		Tag: 5, LinkUp: ready, AdminUp: true, IfaceUUID: "u-" + name}
}

func expectSent(t *testing.T, r *recorder) sent {
	t.Helper()
	select {
	case s := <-r.out:
		return s
	case <-time.After(2 * time.Second):
		t.Fatal("nothing announced")
	}
	return sent{}
}

func expectQuiet(t *testing.T, r *recorder) {
	t.Helper()
	select {
	case s := <-r.out:
		t.Fatalf("unexpected announcement %+v", s)
	case <-time.After(150 * time.Millisecond):
	}
}

func TestOVSCarrierArrival(t *testing.T) {
	dm, rec := newOVSDaemon(t, "", nil)
	// Present at start and ready: not announced.
	dm.OVSInitial([]ovs.Port{vport("vif1.0", true), vport("vif2.0", false)})
	expectQuiet(t, rec)
	// Admin up but no carrier: nothing yet.
	p := vport("vif3.0", false)
	p.MAC = mac2
	dm.OVSEvent(ovs.Event{Port: p})
	expectQuiet(t, rec)
	prev := p
	p.LinkUp = true
	dm.OVSEvent(ovs.Event{Port: p, Prev: &prev})
	s := expectSent(t, rec)
	idle(t, dm, mac2)
	if s.backend != "ovs" || s.port != "vif3.0" || s.guest.MAC.String() != mac2.String() || s.guest.Source != "ovsdb" {
		t.Fatalf("got %+v", s)
	}
	// A change that is not an arrival (tag) announces nothing.
	prev = p
	p.Tag = 6
	dm.OVSEvent(ovs.Event{Port: p, Prev: &prev})
	expectQuiet(t, rec)
	// An ofport still being assigned is not ready.
	q := vport("vif4.0", true)
	q.OFPort = 0
	dm.OVSEvent(ovs.Event{Port: q})
	expectQuiet(t, rec)
	prevq := q
	q.OFPort = 9
	dm.OVSEvent(ovs.Event{Port: q, Prev: &prevq})
	if s := expectSent(t, rec); s.port != "vif4.0" {
		t.Fatalf("got %+v", s)
	}
}

func TestOVSRecreatedAndDeleted(t *testing.T) {
	dm, rec := newOVSDaemon(t, "", nil)
	p := vport("vif1.0", true)
	dm.OVSInitial([]ovs.Port{p})
	// The same name, a new Interface row, reported up in one step: a new
	// port, so a new arrival.
	prev := p
	p.IfaceUUID = "u-new"
	dm.OVSEvent(ovs.Event{Port: p, Prev: &prev})
	expectSent(t, rec)
	idle(t, dm, mac1)
	dm.OVSEvent(ovs.Event{Port: p, Deleted: true})
	dm.OVSEvent(ovs.Event{Port: p})
	expectSent(t, rec)
}

func TestOVSIdentity(t *testing.T) {
	ip := netip.MustParseAddr("10.0.0.10")
	resolvers := map[string]announce.Guest{
		"vif1.0": {MAC: mac1, IPs: []netip.Addr{ip}, Source: "xenstore"},
		"vif2.0": {MAC: mac2, IPs: []netip.Addr{ip}, Source: "config"},
		"vif3.0": {MAC: mac2, IPs: []netip.Addr{ip}, Source: "libvirt"},
	}
	dm, rec := newOVSDaemon(t, "", func(port string) (announce.Guest, bool) {
		g, ok := resolvers[port]
		return g, ok
	})
	for _, tc := range []struct {
		port, mac, source string
		ips               int
	}{
		{"vif1.0", mac1.String(), "ovsdb+xenstore", 1}, // agree: attached-mac with resolver's addresses
		{"vif2.0", mac2.String(), "config", 1},         // a config entry wins over attached-mac
		{"vif3.0", mac1.String(), "ovsdb", 0},          // disagree: attached-mac, no foreign addresses
		{"vif4.0", mac1.String(), "ovsdb", 0},          // unknown to resolvers
	} {
		dm.OVSEvent(ovs.Event{Port: vport(tc.port, true)})
		s := expectSent(t, rec)
		idle(t, dm, s.guest.MAC)
		if s.port != tc.port || s.guest.MAC.String() != tc.mac || s.guest.Source != tc.source || len(s.guest.IPs) != tc.ips {
			t.Errorf("%s: got %s %s %v", tc.port, s.guest.MAC, s.guest.Source, s.guest.IPs)
		}
	}
}

func TestOVSBridgeNotWatched(t *testing.T) {
	dm, rec := newOVSDaemon(t, "bridges: [xenbr*]\n", nil)
	dm.OVSEvent(ovs.Event{Port: vport("vif1.0", true)})
	expectQuiet(t, rec)
}

// Netlink sees OVS ports too: a userspace-datapath port with no master and a
// kernel-datapath port under ovs-system must never become Linux-bridge
// ports, whatever order the two views arrive in.
func TestOVSPortsNotLinuxPorts(t *testing.T) {
	dm, rec := newOVSDaemon(t, "", nil)
	links := []netwatch.Link{
		{Index: 1, Name: "ovs-system", Kind: OVSMasterKind},
		{Index: 2, Name: "xenbr0", Kind: "bridge", AdminUp: true, OperUp: true},
		{Index: 3, Name: "vif1.0", Master: 1, AdminUp: true, OperUp: true},
		{Index: 4, Name: "vif2.0", AdminUp: true}, // userspace datapath: no master
	}
	dm.Initial(links)
	if p := dm.ports[linuxKey(3)]; p != nil {
		t.Fatal("port under ovs-system tracked as a Linux port")
	}
	if dm.ports[linuxKey(4)] == nil {
		t.Fatal("a masterless vif unknown to OVS is still followed by netlink")
	}
	p := vport("vif2.0", false)
	dm.OVSEvent(ovs.Event{Port: p})
	if dm.ports[linuxKey(4)] != nil {
		t.Fatal("OVS did not take over the netlink entry of its port")
	}
	if got := dm.ports[ovsKey("vif2.0")]; got == nil || got.ifindex != 4 {
		t.Fatalf("OVS port not tracked with its ifindex: %+v", got)
	}
	// Carrier seen by netlink first (OVS copies it into link_state later):
	// one announcement, through OVS, and none when OVSDB catches up.
	l := links[3]
	l.OperUp = true
	dm.Link(netwatch.Event{Link: l})
	if dm.ports[linuxKey(4)] != nil {
		t.Fatal("netlink event re-tracked an OVS port")
	}
	if s := expectSent(t, rec); s.backend != "ovs" || s.port != "vif2.0" {
		t.Fatalf("got %+v", s)
	}
	prev := p
	p.LinkUp = true
	dm.OVSEvent(ovs.Event{Port: p, Prev: &prev})
	expectQuiet(t, rec)
	// Carrier lost in the kernel: the port leaves even while OVSDB still
	// says up, so the next carrier is a new arrival.
	idle(t, dm, mac1)
	l.OperUp = false
	dm.Link(netwatch.Event{Link: l})
	if dm.ports[ovsKey("vif2.0")].ready {
		t.Fatal("still ready without carrier")
	}
	l.OperUp = true
	dm.Link(netwatch.Event{Link: l})
	expectSent(t, rec)
}

// idle waits for the guest's burst to end, so the next arrival of the same
// MAC is not folded into it.
func idle(t *testing.T, dm *Daemon, mac net.HardwareAddr) {
	t.Helper()
	dm.wait()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := dm.d.Engine.Wait(ctx); err != nil {
		t.Fatalf("burst for %s did not end: %v", mac, err)
	}
}

// libvirt reuses vnetN names: a stale OVSDB row for a name (ovs-vswitchd
// down when the VM went, a port never deleted) must not hide the
// Linux-bridge port that has the name now. Netlink's master wins (#11 item 7).
func TestStaleOVSRowDoesNotHideLinuxPort(t *testing.T) {
	for _, ovsFirst := range []bool{true, false} {
		t.Run(map[bool]string{true: "row before the link", false: "row after the link"}[ovsFirst], func(t *testing.T) {
			dm, rec := newOVSDaemon(t, "", func(string) (announce.Guest, bool) {
				return announce.Guest{MAC: mac2, Source: "test"}, true
			})
			br := netwatch.Link{Index: 2, Name: "xenbr0", Kind: "bridge", AdminUp: true, OperUp: true}
			vif := netwatch.Link{Index: 3, Name: "vif5.0", Master: 2, AdminUp: true, STP: netwatch.STPForwarding}
			stale := vport("vif5.0", true)
			if ovsFirst {
				dm.OVSInitial([]ovs.Port{stale})
				dm.Initial([]netwatch.Link{br, vif})
			} else {
				dm.Initial([]netwatch.Link{br, vif})
				dm.OVSInitial([]ovs.Port{stale})
				dm.OVSEvent(ovs.Event{Port: stale})
			}
			vif.OperUp = true
			dm.Link(netwatch.Event{Link: vif})
			s := expectSent(t, rec)
			if s.backend != "linux" || s.port != "vif5.0" {
				t.Fatalf("announced %+v, want through the Linux bridge", s)
			}
			expectQuiet(t, rec)
		})
	}
}
