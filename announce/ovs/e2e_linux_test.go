//go:build linux

package ovs_test

import (
	"context"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/selfannounce/selfannounce/announce/ovs"
	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/ovstest"
	"github.com/selfannounce/selfannounce/internal/testenv"
)

type rig struct {
	t     *testing.T
	o     *ovstest.OVS
	host  *netlab.NS
	guest *netlab.NS

	initial chan []ovs.Port
	events  chan ovs.Event
	mon     *ovs.Monitor
}

func mac(last byte) net.HardwareAddr { return net.HardwareAddr{0x52, 0x54, 0x00, 0xaa, 0xbb, last} }

// addVIF plugs a veth into br0 as a guest port; its peer (the "guest's
// NIC") lives in the guest namespace and is up, so the VIF has carrier.
func (r *rig) addVIF(name string, tag int, m net.HardwareAddr) {
	r.t.Helper()
	peer := "g-" + name
	r.host.MustRun(r.t, "ip", "link", "add", name, "type", "veth", "peer", "name", peer, "netns", r.guest.Name)
	r.host.MustRun(r.t, "ip", "link", "set", name, "up")
	r.guest.MustRun(r.t, "ip", "link", "set", peer, "up")
	r.o.Vsctl(r.t, "add-port", "br0", name, "tag="+itoa(tag), "--",
		"set", "Interface", name, "external_ids:attached-mac="+m.String())
}

func itoa(n int) string { return strconv.Itoa(n) }

func newRig(t *testing.T) *rig {
	testenv.RequireRoot(t)
	r := &rig{
		t:       t,
		host:    netlab.TestNS(t, "ovsh"),
		guest:   netlab.TestNS(t, "ovsg"),
		initial: make(chan []ovs.Port, 1),
		events:  make(chan ovs.Event, 256),
	}
	r.o = ovstest.Start(t, r.host)
	r.o.AddBridge(t, "br0")
	return r
}

func (r *rig) run() {
	r.mon = ovs.NewMonitor(r.o.DBAddr(), zaptest.NewLogger(r.t))
	r.mon.MinBackoff = 50 * time.Millisecond
	r.mon.MaxBackoff = 200 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := r.mon.Run(ctx, func(ps []ovs.Port) { r.initial <- ps }, func(e ovs.Event) { r.events <- e }); err != nil {
			r.t.Errorf("Run: %v", err)
		}
	}()
	r.t.Cleanup(func() { cancel(); wg.Wait() })
}

// waitFor consumes events until one satisfies ok, returning those seen.
func (r *rig) waitFor(what string, ok func(ovs.Event) bool) []ovs.Event {
	r.t.Helper()
	var seen []ovs.Event
	timeout := time.After(10 * time.Second)
	for {
		select {
		case e := <-r.events:
			r.t.Logf("event: %v", e)
			seen = append(seen, e)
			if ok(e) {
				return seen
			}
		case <-timeout:
			r.t.Fatalf("timed out waiting for %s; saw %v", what, seen)
		}
	}
}

// quiet collects whatever events arrive within d.
func (r *rig) quiet(d time.Duration) []ovs.Event {
	var seen []ovs.Event
	end := time.After(d)
	for {
		select {
		case e := <-r.events:
			r.t.Logf("event: %v", e)
			seen = append(seen, e)
		case <-end:
			return seen
		}
	}
}

func TestMonitor(t *testing.T) {
	r := newRig(t)
	r.addVIF("vif1.0", 5, mac(5))
	r.run()

	// Initial state: the existing VIF with its VLAN, MAC and port number,
	// plus the bridge's own internal port.
	var initial []ovs.Port
	select {
	case initial = <-r.initial:
	case <-time.After(10 * time.Second):
		t.Fatal("no initial snapshot")
	}
	p, ok := ovs.Find(initial, "vif1.0")
	if !ok || p.Bridge != "br0" || p.Tag != 5 || p.MAC.String() != mac(5).String() || p.OFPort <= 0 ||
		p.Datapath != "netdev" || !p.Ready() {
		t.Fatalf("initial vif1.0: %+v (found %v)", p, ok)
	}
	if bp, ok := ovs.Find(initial, "br0"); !ok || bp.Type != "internal" || bp.MAC != nil {
		t.Fatalf("initial br0: %+v (found %v)", bp, ok)
	}

	// A new VIF arrives and becomes ready with its tag and MAC.
	r.addVIF("vif2.0", 7, mac(7))
	seen := r.waitFor("vif2.0 ready", func(e ovs.Event) bool {
		return e.Port.Name == "vif2.0" && e.Port.Ready()
	})
	if seen[0].Port.Name != "vif2.0" || seen[0].Prev != nil || seen[0].Deleted {
		t.Fatalf("first event should announce vif2.0 as new: %v", seen[0])
	}
	if got, _ := r.mon.Lookup("vif2.0"); got.Tag != 7 || got.MAC.String() != mac(7).String() || got.OFPort <= 0 {
		t.Fatalf("Lookup(vif2.0) = %+v", got)
	}

	// The guest's side going down takes the VIF's carrier, and readiness.
	r.guest.MustRun(t, "ip", "link", "set", "g-vif2.0", "down")
	r.waitFor("vif2.0 link down", func(e ovs.Event) bool {
		return e.Port.Name == "vif2.0" && !e.Port.LinkUp && e.Prev != nil && e.Prev.Ready()
	})
	r.guest.MustRun(t, "ip", "link", "set", "g-vif2.0", "up")
	r.waitFor("vif2.0 link up again", func(e ovs.Event) bool {
		return e.Port.Name == "vif2.0" && e.Port.Ready() && e.Prev != nil && !e.Prev.Ready()
	})
	// Admin state follows the host side.
	r.host.MustRun(t, "ip", "link", "set", "vif2.0", "down")
	r.waitFor("vif2.0 admin down", func(e ovs.Event) bool {
		return e.Port.Name == "vif2.0" && !e.Port.AdminUp
	})
	r.host.MustRun(t, "ip", "link", "set", "vif2.0", "up")
	r.waitFor("vif2.0 admin up", func(e ovs.Event) bool {
		return e.Port.Name == "vif2.0" && e.Port.Ready()
	})

	// A VLAN change is a change, not an arrival.
	r.o.Vsctl(t, "set", "Port", "vif2.0", "tag=8")
	r.waitFor("vif2.0 retagged", func(e ovs.Event) bool {
		return e.Port.Name == "vif2.0" && e.Port.Tag == 8 && e.Prev != nil && e.Prev.Tag == 7
	})

	// Deletion.
	r.o.Vsctl(t, "del-port", "br0", "vif2.0")
	r.waitFor("vif2.0 deleted", func(e ovs.Event) bool { return e.Port.Name == "vif2.0" && e.Deleted })
	if _, ok := r.mon.Lookup("vif2.0"); ok {
		t.Fatal("Lookup still finds a deleted port")
	}

	// Statistics and other columns OVS rewrites constantly yield nothing.
	if evs := r.quiet(6 * time.Second); len(evs) != 0 {
		t.Fatalf("idle switch produced events: %v", evs)
	}

	// ovsdb-server restarts: the monitor reconnects without reporting the
	// ports it already knew, and reports a port added afterwards.
	r.o.RestartDB(t)
	if evs := r.quiet(2 * time.Second); len(evs) != 0 {
		t.Fatalf("ovsdb-server restart produced events: %v", evs)
	}
	r.addVIF("vif3.0", 9, mac(9))
	seen = r.waitFor("vif3.0 after DB restart", func(e ovs.Event) bool {
		return e.Port.Name == "vif3.0" && e.Port.Ready() && e.Port.Tag == 9
	})
	for _, e := range seen {
		if e.Port.Name != "vif3.0" {
			t.Fatalf("unexpected event after DB restart: %v", e)
		}
	}

	// A change made while the server is down is reported once it is back.
	r.o.StopDB(t)
	time.Sleep(300 * time.Millisecond)
	r.o.StartDB(t)
	r.o.Vsctl(t, "set", "Port", "vif3.0", "tag=10")
	r.waitFor("vif3.0 retagged across reconnect", func(e ovs.Event) bool {
		return e.Port.Name == "vif3.0" && e.Port.Tag == 10 && e.Prev != nil
	})

	// ovs-vswitchd restarts: its ports keep their rows; whatever it
	// rewrites must not look like an arrival of an existing port.
	r.o.RestartSwitch(t)
	for _, e := range r.quiet(3 * time.Second) {
		if e.Prev == nil && !e.Deleted {
			t.Errorf("ovs-vswitchd restart re-announced %v", e)
		}
	}
	if got, ok := r.mon.Lookup("vif1.0"); !ok || !got.Ready() {
		t.Fatalf("vif1.0 after ovs-vswitchd restart: %+v", got)
	}
}

func TestSnapshot(t *testing.T) {
	r := newRig(t)
	r.addVIF("vif4.1", 0, mac(0x41))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ports, err := ovs.Snapshot(ctx, r.o.DBAddr())
	if err != nil {
		t.Fatal(err)
	}
	p, ok := ovs.Find(ports, "vif4.1")
	if !ok || p.Tag != 0 || p.MAC.String() != mac(0x41).String() || p.OFPort <= 0 {
		t.Fatalf("vif4.1: %+v (found %v) in %v", p, ok, ports)
	}
	if _, err := ovs.Snapshot(ctx, "unix:"+r.o.Dir()+"/nothing.sock"); err == nil {
		t.Fatal("Snapshot of a missing server succeeded")
	}
	if _, err := ovs.Snapshot(ctx, "db.sock"); err == nil {
		t.Fatal("Snapshot accepted a malformed address")
	}
}
