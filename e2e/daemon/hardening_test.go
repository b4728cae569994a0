//go:build linux

package daemon_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/internal/proctest"
	"github.com/selfannounce/selfannounce/internal/wiretest"
)

// noResolvers keeps the daemon from knowing any guest but those in extra:
// no xenstored, and a libvirt status directory of its own, empty.
func noResolvers(t *testing.T, extra string) string {
	return fmt.Sprintf("xenstore:\n  path: \"off\"\nlibvirt:\n  status-dir: %q\n%s", t.TempDir(), extra)
}

// ethFrame is a minimal frame from src to dst with ethertype et.
func ethFrame(dst, src net.HardwareAddr, et uint16) []byte {
	f := make([]byte, 60)
	copy(f[0:6], dst)
	copy(f[6:12], src)
	f[12], f[13] = byte(et>>8), byte(et)
	return f
}

// A tenant on a tap that no resolver knows sends, as its first frame, one
// carrying a neighbour VM's MAC. The host has the usual anti-spoofing for
// such a port: learning off, and the frame is one the bridge does not
// forward (an LLDP-addressed frame, as a filter would drop it). The
// daemon's packet socket still sees it. With the default config, neither
// the host bridge's entry for the neighbour nor the switch may move, and
// nothing leaves for that MAC (#11 item 1).
func TestGuestFrameSpoofingNeighbourMAC(t *testing.T) {
	bin := requireE2E(t)
	h := newHost(t)
	t0 := time.Now()
	neighbour, _ := net.ParseMAC(macN(3))

	// The neighbour VM, known to the bridge on vif3.0.
	h.addVif("vif3.0", "g3")
	// The guest ends send nothing of their own (no IPv6 autoconfiguration):
	// every frame from the neighbour's MAC after the spoof is the spoof's
	// or the daemon's doing.
	sh(t, h.guests, "sysctl -qw net.ipv6.conf.default.disable_ipv6=1 net.ipv6.conf.g3.disable_ipv6=1")
	sh(t, h.guests, "ip link set g3 address "+neighbour.String()+" up")
	wiretest.WaitForwarding(t, h.ns, 10*time.Second, "vif3.0")
	if err := wiretest.Inject(h.guests, "g3", ethFrame(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, neighbour, 0x88b5)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for h.fdb()[neighbour.String()] != "vif3.0" {
		if time.Now().After(deadline) {
			t.Fatalf("host bridge never learned the neighbour on vif3.0: %v", h.fdb())
		}
		time.Sleep(20 * time.Millisecond)
	}

	t.Logf("neighbour learned after %v", time.Since(t0))
	d := startDaemon(t, bin, h.ns, writeConfig(t, noResolvers(t, "")))
	// The tenant's tap (trigger guest-frame), anti-spoofed: learning off.
	h.addVif("vnet7", "g7")
	sh(t, h.guests, "sysctl -qw net.ipv6.conf.g7.disable_ipv6=1")
	sh(t, h.ns, "bridge link set dev vnet7 learning off")
	h.setGuest("g7", true)
	wiretest.WaitForwarding(t, h.ns, 10*time.Second, "vnet7")

	t.Logf("tap forwarding after %v", time.Since(t0))
	spoofed := time.Now()
	lldp := net.HardwareAddr{0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e}
	if err := wiretest.Inject(h.guests, "g7", ethFrame(lldp, neighbour, 0x88cc)); err != nil {
		t.Fatal(err)
	}
	// The daemon saw the frame and refused to take its MAC as the guest's.
	l, ok := d.waitLog(5*time.Second, func(l proctest.Log) bool {
		return l.Str("port") == "vnet7" && (strings.HasPrefix(l.Msg, "not announced") || l.Msg == "burst")
	})
	if !ok {
		t.Fatal("the daemon never acted on the tap's first frame: the test proves nothing")
	}
	t.Logf("daemon: %s", l.Msg)
	time.Sleep(time.Second) // a burst's first rounds, had one started
	if got := h.fdb()[neighbour.String()]; got != "vif3.0" {
		t.Errorf("host bridge forwards the neighbour's MAC to %q, want still vif3.0", got)
	}
	if fs := h.wire.all(func(f frame) bool { return f.Src == neighbour.String() && f.At.After(spoofed) }); len(fs) != 0 {
		t.Errorf("%d frames from the neighbour's MAC reached the switch after the spoof (%v): the switch moved", len(fs), kinds(fs))
	}
	if l.Msg == "burst" {
		t.Errorf("the daemon announced the spoofed MAC from vnet7")
	}
}

// stallServer is a xenstored that accepts connections and reads requests
// but never answers one: a wedged dependency.
type stallServer struct {
	path string
	mu   sync.Mutex
	reqs []time.Time // when each read returned bytes
}

func newStallServer(t *testing.T) *stallServer {
	t.Helper()
	s := &stallServer{path: filepath.Join(t.TempDir(), "xenstored")}
	ln, err := net.Listen("unix", s.path)
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var cmu sync.Mutex
	t.Cleanup(func() {
		ln.Close()
		cmu.Lock()
		for _, c := range conns {
			c.Close()
		}
		cmu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			cmu.Lock()
			conns = append(conns, c)
			cmu.Unlock()
			go func() {
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						s.mu.Lock()
						s.reqs = append(s.reqs, time.Now())
						s.mu.Unlock()
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return s
}

func (s *stallServer) requestsSince(t0 time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.reqs {
		if r.After(t0) {
			n++
		}
	}
	return n
}

// A xenstored that never answers, asked about one Linux-bridge port, must
// not hold up another port's arrival: the other port's first frame is on
// the wire while the wedged resolve is still blocked, i.e. before the
// daemon has given up on it (#11 item 3).
func TestWedgedXenstoreDoesNotDelayOtherArrival(t *testing.T) {
	bin := requireE2E(t)
	h := newHost(t)
	xs := newStallServer(t)
	other := macN(2)
	h.addVif("vif1.0", "g1") // known only to xenstore: its resolve wedges
	h.addVif("vif2.0", "g2") // in the config
	cfg := fmt.Sprintf("xenstore:\n  path: %q\nlibvirt:\n  status-dir: %q\nguests:\n%s", xs.path, t.TempDir(), guestYAML("vif2.0", other, "10.0.0.20"))
	d := startDaemon(t, bin, h.ns, writeConfig(t, cfg))

	up1 := time.Now()
	h.setGuest("g1", true)
	deadline := time.Now().Add(5 * time.Second)
	for xs.requestsSince(up1) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the daemon never asked xenstored about vif1.0")
		}
		time.Sleep(5 * time.Millisecond)
	}
	up2 := time.Now()
	h.setGuest("g2", true)
	fs := h.wire.waitFor(10*time.Second, 1, func(f frame) bool { return f.Kind == kindRARP && f.Src == other })
	if len(fs) == 0 {
		t.Fatal("vif2.0 never announced")
	}
	gaveUp := d.Logs(func(l proctest.Log) bool {
		return l.Str("port") == "vif1.0" && (strings.HasPrefix(l.Msg, "not announced") || strings.HasPrefix(l.Msg, "arrival failed"))
	})
	t.Logf("vif2.0's first frame %v after its carrier was raised, with vif1.0's resolve wedged", fs[0].At.Sub(up2))
	if len(gaveUp) != 0 {
		t.Errorf("vif2.0 was announced only after the daemon gave up on vif1.0's wedged resolve (%q at %v, first frame at %v)",
			gaveUp[0].Msg, gaveUp[0].At.Format(time.StampMicro), fs[0].At.Format(time.StampMicro))
	}
	if len(h.wire.announcements(macN(1))) != 0 {
		t.Error("frames for vif1.0's guest, which nobody knows")
	}
}

// The daemon restarts while a VM is migrating in: its tap is already on the
// bridge with carrier (QEMU opened it), but the guest has not run yet. The
// guest's first frame after the restart is its arrival and is announced;
// a carrier-triggered vif ready at start still is not (a restart never
// storms) (#11 item 10).
func TestRestartDuringIncomingMigration(t *testing.T) {
	bin := requireE2E(t)
	h := newHost(t)
	tapMAC, vifMAC := macN(9), macN(10)
	sh(t, h.guests, "sysctl -qw net.ipv6.conf.default.disable_ipv6=1")
	h.addVif("vnet9", "g9")
	h.addVif("vif10.0", "g10")
	h.setGuest("g9", true)
	h.setGuest("g10", true)
	wiretest.WaitForwarding(t, h.ns, 10*time.Second, "vnet9", "vif10.0")
	cfg := writeConfig(t, noResolvers(t, "guests:\n"+guestYAML("vnet9", tapMAC, "10.0.0.90")+guestYAML("vif10.0", vifMAC, "10.0.0.100")))
	d := startDaemon(t, bin, h.ns, cfg)
	time.Sleep(500 * time.Millisecond)
	if n := len(h.wire.announcements("")); n != 0 {
		t.Fatalf("%d announcements at start-up, want none", n)
	}
	// The migrated guest resumes: its first frame (QEMU's RARP, in the field).
	src, _ := net.ParseMAC(tapMAC)
	resumed := time.Now()
	if err := wiretest.Inject(h.guests, "g9", ethFrame(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, src, 0x8035)); err != nil {
		t.Fatal(err)
	}
	fs := h.wire.waitFor(3*time.Second, 5, func(f frame) bool {
		return f.Src == tapMAC && f.Kind == kindRARP && f.At.After(resumed)
	})
	// The injected frame is a bare 0x8035 header, which the capture does
	// not count as a RARP: every RARP on the switch is the daemon's.
	if len(fs) != 5 {
		t.Errorf("the tap's guest was not announced after its first frame: %d RARPs", len(fs))
	}
	if bs := d.bursts(tapMAC); len(bs) != 1 {
		t.Errorf("%d bursts logged for the tap's guest, want 1", len(bs))
	}
	if n := len(h.wire.announcements(vifMAC)); n != 0 {
		t.Errorf("%d frames for the vif that was ready at start, want none", n)
	}
}

// SIGHUP that adds a bridge to the watched set: the VMs long running on it
// are not arrivals, not even on their next netlink event; a real arrival
// there afterwards is announced (#11 item 11).
func TestReloadNewBridgeNoSpuriousArrival(t *testing.T) {
	bin := requireE2E(t)
	h := newHost(t)
	sh(t, h.ns, fmt.Sprintf(`
		ip link add xenbr1 type bridge
		ip link set xenbr1 up
		ip link add up1 type veth peer name pB1 netns %s
		ip link set up1 master xenbr1 up`, h.sw.Name))
	sh(t, h.sw, "ip link set pB1 up")
	wire1 := startCapture(t, h.sw, "pB1")
	mac := macN(11)
	batch(t, h.ns, []string{
		fmt.Sprintf("link add vif11.0 type veth peer name g11 netns %s", h.guests.Name),
		"link set vif11.0 master xenbr1 up",
	})
	h.setGuest("g11", true)
	wiretest.WaitForwarding(t, h.ns, 10*time.Second, "vif11.0")
	body := func(bridges string) string {
		return fmt.Sprintf("bridges: [%s]\nflap: {holddown: 0s}\n", bridges) + noResolvers(t, "guests:\n"+guestYAML("vif11.0", mac, "10.0.0.110"))
	}
	cfg := writeConfig(t, body(`"xenbr0"`))
	d := startDaemon(t, bin, h.ns, cfg)
	if err := os.WriteFile(cfg, []byte(body(`"xenbr0", "xenbr1"`)), 0o644); err != nil {
		t.Fatal(err)
	}
	d.signal(syscall.SIGHUP)
	if _, ok := d.waitLog(3*time.Second, func(l proctest.Log) bool { return l.Msg == "config reloaded" }); !ok {
		t.Fatal("no \"config reloaded\" after SIGHUP")
	}
	// The port's next event that the link watcher reports (it reports
	// changes of what readiness depends on, and of the MAC).
	sh(t, h.ns, "ip link set dev vif11.0 address fe:ff:ff:ff:ff:fe")
	time.Sleep(time.Second)
	if fs := wire1.announcements(mac); len(fs) != 0 {
		t.Errorf("%d announcements for a VM that was on the newly watched bridge all along, want none (%v)", len(fs), kinds(fs))
	}
	// Watched now: a real arrival there is announced.
	h.setGuest("g11", false)
	time.Sleep(200 * time.Millisecond)
	up := time.Now()
	h.setGuest("g11", true)
	if fs := wire1.waitFor(5*time.Second, 1, func(f frame) bool { return f.Kind == kindRARP && f.Src == mac && f.At.After(up) }); len(fs) == 0 {
		t.Error("the arrival on the newly watched bridge was not announced")
	}
}
