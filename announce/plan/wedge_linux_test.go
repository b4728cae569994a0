//go:build linux

package plan_test

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/burst"
	"github.com/selfannounce/selfannounce/announce/linuxbr"
	"github.com/selfannounce/selfannounce/announce/ovs"
	"github.com/selfannounce/selfannounce/announce/plan"
	"github.com/selfannounce/selfannounce/announce/schedule"
	"github.com/selfannounce/selfannounce/announce/send"
	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/ovstest"
	"github.com/selfannounce/selfannounce/internal/testenv"
	"github.com/selfannounce/selfannounce/internal/wiretest"
)

// ovsGuests is how many OVS arrivals are queued ahead of the Linux one.
// Before the fix each of their frames waited about a second for a session
// with the wedged switch, under the engine's lock, so the Linux arrival's
// first frame came tens of seconds late.
const ovsGuests = 8

// wedgeWindow is how long the test keeps ovs-vswitchd stopped at most
// while it waits for the Linux burst. It is not a latency bound: it only
// tells "went out while the switch was wedged" from "waited for OVS".
const wedgeWindow = 20 * time.Second

type wedgeLab struct {
	host, sw *netlab.NS
	ovs      *ovstest.OVS
	ports    plan.StaticPorts
	linux    *linuxbr.Path
	sender   send.Sender
}

func ifLink(t *testing.T, ns *netlab.NS, name string) linuxbr.Link {
	t.Helper()
	idx, err := strconv.Atoi(ns.MustRun(t, "cat", "/sys/class/net/"+name+"/ifindex"))
	if err != nil {
		t.Fatal(err)
	}
	return linuxbr.Link{Name: name, Index: idx}
}

// newWedgeLab builds one host with both backends:
//
//	Linux: br0 = {up0 ── sw0 (switch ns), vif9.0}
//	OVS:   ovsbr (userspace) = {trunk0 ── swt0 (switch ns), vif1.0 .. vifN.0}
func newWedgeLab(t *testing.T) *wedgeLab {
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "ip")
	l := &wedgeLab{host: netlab.TestNS(t, "wedgeh"), sw: netlab.TestNS(t, "wedgesw")}
	for _, ns := range []*netlab.NS{l.host, l.sw} {
		ns.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	}
	script := fmt.Sprintf(`
ip link add br0 type bridge forward_delay 0 stp_state 0
ip link add up0 type veth peer name sw0
ip link set sw0 netns %[1]s
ip link add vif9.0 type veth peer name vif9p
ip link set up0 master br0
ip link set vif9.0 master br0
ip link add trunk0 type veth peer name swt0
ip link set swt0 netns %[1]s
for d in br0 up0 vif9.0 vif9p trunk0; do ip link set $d up; done
`, l.sw.Name)
	for i := 1; i <= ovsGuests; i++ {
		script += fmt.Sprintf("ip link add vif%d.0 type veth peer name g%d\nip link set vif%d.0 up\nip link set g%d up\n", i, i, i, i)
	}
	if _, err := l.host.Sh(script); err != nil {
		t.Fatal(err)
	}
	l.sw.MustRun(t, "ip", "link", "set", "sw0", "up")
	l.sw.MustRun(t, "ip", "link", "set", "swt0", "up")

	l.ovs = ovstest.Start(t, l.host)
	l.ovs.AddBridge(t, "ovsbr")
	l.ovs.Vsctl(t, "add-port", "ovsbr", "trunk0")
	for i := 1; i <= ovsGuests; i++ {
		name := fmt.Sprintf("vif%d.0", i)
		l.ovs.Vsctl(t, "add-port", "ovsbr", name)
		l.ovs.Vsctl(t, "set", "Interface", name, "external_ids:attached-mac="+ovsMAC(i).String())
		l.ovs.Ofctl(t, "show", "ovsbr") // the port is there before its ofport is read
		l.ports = append(l.ports, ovs.Port{Bridge: "ovsbr", Datapath: "netdev", Name: name, PortName: name, OFPort: l.ovs.OFPort(t, name), MAC: ovsMAC(i)})
	}

	up0 := ifLink(t, l.host, "up0")
	l.linux = &linuxbr.Path{Port: ifLink(t, l.host, "vif9.0"), Bridge: ifLink(t, l.host, "br0"), Uplinks: []linuxbr.Uplink{{Link: up0}}}
	l.sender = send.NewPacketSender()
	t.Cleanup(func() { l.sender.Close() })
	// The packet socket belongs to the namespace of its first send; the
	// engine's goroutine sends from the host's own.
	warm := make([]byte, 60)
	copy(warm, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(warm[6:], []byte{0x02, 0, 0, 0, 0, 0x99})
	warm[12], warm[13] = 0x88, 0xb5
	if err := l.host.Do(func() error { return l.sender.Send(up0.Index, warm) }); err != nil {
		t.Fatal(err)
	}
	wiretest.WaitForwarding(t, l.host, 5*time.Second, "up0", "vif9.0")
	return l
}

func ovsMAC(i int) net.HardwareAddr   { return net.HardwareAddr{0x52, 0x54, 0x00, 0x0f, 0x00, byte(i)} }
func linuxMAC(i int) net.HardwareAddr { return net.HardwareAddr{0x52, 0x54, 0x00, 0x1b, 0x00, byte(i)} }

func guest(mac net.HardwareAddr, ip string) announce.Guest {
	return announce.Guest{MAC: mac, IPs: []netip.Addr{netip.MustParseAddr(ip)}, Source: "test"}
}

// linuxArrival starts a Linux-bridge burst and returns when it was queued
// and a channel for its result.
func (l *wedgeLab) linuxArrival(t *testing.T, e *burst.Engine, mac net.HardwareAddr) (time.Time, chan burst.Result) {
	t.Helper()
	lp := plan.Linux{Sender: l.sender}
	pl, err := lp.FromPath(l.linux, guest(mac, "10.9.0.9"))
	if err != nil {
		t.Fatal(err)
	}
	res := make(chan burst.Result, 1)
	at := time.Now()
	if err := e.Start(&burst.Burst{Key: mac.String(), Packets: pl.Packets, Schedule: schedule.Default(), Done: func(r burst.Result) { res <- r }}); err != nil {
		t.Fatal(err)
	}
	return at, res
}

func (l *wedgeLab) ovsArrivals(t *testing.T, e *burst.Engine, o *plan.OVS) []chan burst.Result {
	t.Helper()
	var out []chan burst.Result
	for i := 1; i <= ovsGuests; i++ {
		pl, err := o.Plan(fmt.Sprintf("vif%d.0", i), guest(ovsMAC(i), fmt.Sprintf("10.1.0.%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		res := make(chan burst.Result, 1)
		if err := e.Start(&burst.Burst{Key: ovsMAC(i).String(), Packets: pl.Packets, Schedule: schedule.Default(), Done: func(r burst.Result) { res <- r }}); err != nil {
			t.Fatal(err)
		}
		out = append(out, res)
	}
	return out
}

func vswitchdPID(t *testing.T, o *ovstest.OVS) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(o.Dir(), "ovs-vswitchd.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func from(fs []wiretest.Frame, mac net.HardwareAddr) []wiretest.Frame {
	var out []wiretest.Frame
	for _, f := range fs {
		if bytes.Equal(f.Src(), mac) {
			out = append(out, f)
		}
	}
	return out
}

// TestWedgedVswitchdDoesNotDelayLinuxArrival: with ovs-vswitchd stopped
// (SIGSTOP) and OVS arrivals queued first, a Linux-bridge arrival's whole
// burst is on the wire while ovs-vswitchd is still stopped. Once it runs
// again, the pool's background redial serves the next OVS arrival in full.
func TestWedgedVswitchdDoesNotDelayLinuxArrival(t *testing.T) {
	l := newWedgeLab(t)
	e := burst.New(1000, nil)
	defer e.Close()
	pool := plan.NewOFPool(nil)
	defer pool.Close()
	o := &plan.OVS{Ports: l.ports, Pool: pool, RunDir: l.ovs.RunDir()}

	// The floor: a Linux arrival with no OVS work at all.
	sw := wiretest.Start(t, l.sw, "sw0", wiretest.In)
	at, res := l.linuxArrival(t, e, linuxMAC(1))
	r := <-res
	floorFrames := from(sw.Stop(t), linuxMAC(1))
	if r.Failed != 0 || len(floorFrames) != 10 {
		t.Fatalf("floor burst: %+v, %d frames on the wire", r, len(floorFrames))
	}
	floor := r.FirstFrame.Sub(at)

	// Wedge the switch before any OpenFlow session exists, as right after
	// an ovs-vswitchd restart: the socket accepts, nothing answers.
	pid := vswitchdPID(t, l.ovs)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	cont := func() {
		if stopped {
			syscall.Kill(pid, syscall.SIGCONT)
			stopped = false
		}
	}
	t.Cleanup(cont)

	sw = wiretest.Start(t, l.sw, "sw0", wiretest.In)
	ovsRes := l.ovsArrivals(t, e, o)
	at, res = l.linuxArrival(t, e, linuxMAC(2))
	select {
	case r = <-res:
	case <-time.After(wedgeWindow):
		cont()
		t.Fatalf("the Linux arrival's burst did not finish within %v of ovs-vswitchd being stopped: it waited for OVS", wedgeWindow)
	}
	onWire := from(sw.Stop(t), linuxMAC(2))
	// Still stopped here: the whole Linux burst left while OVS was wedged.
	st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if f := strings.Fields(string(st)); len(f) < 3 || f[2] != "T" {
		t.Fatalf("ovs-vswitchd is not stopped (stat %q): the test did not wedge it", st)
	}
	cont()
	if r.Failed != 0 || len(onWire) != 10 {
		t.Fatalf("Linux burst under a wedged OVS: %+v, %d of 10 frames on the wire", r, len(onWire))
	}
	wedged := r.FirstFrame.Sub(at)
	t.Logf("Linux arrival to first frame: %v with no OVS work (floor), %v with %d OVS arrivals queued ahead on a stopped ovs-vswitchd", floor, wedged, ovsGuests)

	// The OVS bursts ran to their end meanwhile, their frames failed fast.
	for i, ch := range ovsRes {
		select {
		case r := <-ch:
			t.Logf("OVS arrival %d on the wedged switch: %d frames written, %d failed (%v)", i+1, r.Frames, r.Failed, r.Err)
		case <-time.After(wedgeWindow):
			t.Fatalf("OVS arrival %d never finished", i+1)
		}
	}

	// Running again: the pool redials in the background, and a new OVS
	// arrival's burst reaches the trunk in full.
	trunk := wiretest.Start(t, l.sw, "swt0", wiretest.In)
	deadline := time.Now().Add(wedgeWindow)
	for time.Now().Before(deadline) && pool.Pending(filepath.Join(l.ovs.RunDir(), "ovsbr.mgmt")) != nil {
		time.Sleep(50 * time.Millisecond)
	}
	// A MAC of its own: late frames of the wedged bursts may still cross.
	fresh := ovsMAC(0x40)
	pl, err := o.Plan("vif1.0", guest(fresh, "10.1.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan burst.Result, 1)
	if err := e.Start(&burst.Burst{Key: "after", Packets: pl.Packets, Schedule: schedule.Default(), Done: func(r burst.Result) { done <- r }}); err != nil {
		t.Fatal(err)
	}
	r = <-done
	got := from(trunk.Stop(t), fresh)
	if r.Failed != 0 || len(got) != 10 {
		t.Fatalf("OVS arrival after ovs-vswitchd resumed: %+v, %d of 10 frames on the trunk", r, len(got))
	}
}
