//go:build linux

// Package oneshot_test runs the real announce binary against kernel bridges
// in network namespaces and judges it by what reaches the wire and the
// bridges' forwarding tables.
package oneshot_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/proctest"
	"github.com/selfannounce/selfannounce/internal/testbin"
	"github.com/selfannounce/selfannounce/internal/testenv"
	"github.com/selfannounce/selfannounce/internal/wiretest"
)

// guestMAC is the MAC of QEMU's reference capture, so the RARP can be
// compared with QEMU's bytes verbatim.
const guestMAC = "52:54:00:12:34:56"

// etherTypeTeach is IEEE's local-experimental EtherType: a frame that
// teaches bridges a source MAC without looking like any announcement.
const etherTypeTeach = 0x88b5

// lab is a destination host in the field:
//
//	old ns: old0 ── sw1 ┐
//	                    swbr (switch ns, learns MACs)
//	host ns: up0 ── sw0 ┘
//	host ns: br0 = {up0, vif3.0}; vif3.0 ── eth0 (guest ns, MAC guestMAC)
//	host ns: vnet7 on br0, a libvirt-style port with no guest behind it
//	host ns: vif4.0 on no bridge; br1 = {vif5.0} with no uplink
//
// "old" stands for the host the guest lived on before migrating.
type lab struct {
	host, sw, guest, old *netlab.NS
	bin                  string
	// empty is a directory with no libvirt state and emptyConfig a config
	// file of defaults, so runs do not depend on what this machine's
	// libvirt or /etc happen to hold.
	empty, emptyConfig string
}

func newLab(t *testing.T) *lab {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "ip", "bridge", "sysctl")
	l := &lab{bin: testbin.Announce(t), empty: t.TempDir()}
	l.emptyConfig = filepath.Join(t.TempDir(), "empty.yaml")
	if err := os.WriteFile(l.emptyConfig, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	l.host = netlab.TestNS(t, "host")
	l.sw = netlab.TestNS(t, "sw")
	l.guest = netlab.TestNS(t, "guest")
	l.old = netlab.TestNS(t, "old")
	// IPv6 off so no router solicitation or MLD report crosses the lab
	// while the tests count frames. Packet sockets still carry the NAs.
	for _, ns := range []*netlab.NS{l.host, l.sw, l.guest, l.old} {
		ns.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	}
	mustSh(t, l.host, fmt.Sprintf(`
ip link add br0 type bridge forward_delay 0 stp_state 0
ip link add up0 type veth peer name sw0
ip link set sw0 netns %[1]s
ip link add vif3.0 address fe:ff:ff:ff:ff:ff type veth peer name eth0 address %[3]s
ip link set eth0 netns %[2]s
ip link set up0 master br0
ip link set vif3.0 master br0
ip link add vnet7 address fe:54:00:aa:bb:cc type veth peer name vnet7p
ip link set vnet7 master br0
ip link add vif4.0 type veth peer name lone4
ip link add br1 type bridge forward_delay 0 stp_state 0
ip link add vif5.0 address fe:ff:ff:ff:ff:ff type veth peer name guest5
ip link set vif5.0 master br1
for d in br0 up0 vif3.0 vnet7 vnet7p vif4.0 lone4 br1 vif5.0 guest5; do ip link set $d up; done
`, l.sw.Name, l.guest.Name, guestMAC))
	mustSh(t, l.sw, fmt.Sprintf(`
ip link add swbr type bridge forward_delay 0 stp_state 0
ip link add sw1 type veth peer name old0
ip link set old0 netns %s
ip link set sw0 master swbr
ip link set sw1 master swbr
for d in swbr sw0 sw1; do ip link set $d up; done
`, l.old.Name))
	l.guest.MustRun(t, "ip", "link", "set", "eth0", "up")
	l.old.MustRun(t, "ip", "link", "set", "old0", "up")
	// A bridge forwards on a new port only once the kernel's link watch has
	// seen its carrier, up to a second later.
	wiretest.WaitForwarding(t, l.host, 5*time.Second, "up0", "vif3.0", "vif5.0")
	wiretest.WaitForwarding(t, l.sw, 5*time.Second, "sw0", "sw1")
	return l
}

func mustSh(t *testing.T, ns *netlab.NS, script string) {
	t.Helper()
	if _, err := ns.Sh(script); err != nil {
		t.Fatal(err)
	}
}

func eventually(t *testing.T, d time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// teach makes both bridges learn mac as the field has it before a
// migration: the guest lived behind the old host, so the switch has it on
// sw1 and the destination's bridge behind its uplink.
func (l *lab) teach(t *testing.T, mac string) {
	t.Helper()
	m := mustMAC(t, mac)
	teach := make([]byte, 60)
	copy(teach, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(teach[6:], m)
	binary.BigEndian.PutUint16(teach[12:], etherTypeTeach)
	eventually(t, 5*time.Second, func() error {
		inject(t, l.old, "old0", teach)
		time.Sleep(20 * time.Millisecond)
		if port := fdbPort(t, l.host, "br0", mac); port != "up0" {
			return fmt.Errorf("host bridge has %s on %q, want up0", mac, port)
		}
		if port := fdbPort(t, l.sw, "swbr", mac); port != "sw1" {
			return fmt.Errorf("switch has %s on %q, want sw1", mac, port)
		}
		return nil
	})
}

func mustMAC(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// fdbEntry is one line of `bridge -j fdb show`.
type fdbEntry struct {
	MAC    string   `json:"mac"`
	Ifname string   `json:"ifname"`
	Master string   `json:"master"`
	State  string   `json:"state"`
	Flags  []string `json:"flags"`
}

// fdbLookup returns the bridge's entry for mac that points at one of its
// ports, if any.
func fdbLookup(t *testing.T, ns *netlab.NS, br, mac string) (fdbEntry, bool) {
	t.Helper()
	out := ns.MustRun(t, "bridge", "-j", "fdb", "show", "br", br)
	var ents []fdbEntry
	if err := json.Unmarshal([]byte(out), &ents); err != nil {
		t.Fatalf("bridge -j fdb show br %s: %v: %s", br, err, out)
	}
	for _, e := range ents {
		if strings.EqualFold(e.MAC, mac) && e.Ifname != br && (e.Master == br || e.Master == "") {
			return e, true
		}
	}
	return fdbEntry{}, false
}

func fdbPort(t *testing.T, ns *netlab.NS, br, mac string) string {
	t.Helper()
	e, _ := fdbLookup(t, ns, br, mac)
	return e.Ifname
}

// inject writes whole frames on ifname from inside ns.
func inject(t *testing.T, ns *netlab.NS, ifname string, frames ...[]byte) {
	t.Helper()
	if err := wiretest.Inject(ns, ifname, frames...); err != nil {
		t.Fatal(err)
	}
}

// startCapture records the frames arriving at ifname inside ns from now
// on; Stop returns them.
func startCapture(t *testing.T, ns *netlab.NS, ifname string) *wiretest.Capture {
	t.Helper()
	return wiretest.Start(t, ns, ifname, wiretest.In)
}

// from keeps the frames whose Ethernet source is mac.
func from(fs []wiretest.Frame, mac net.HardwareAddr) []wiretest.Frame {
	var out []wiretest.Frame
	for _, f := range fs {
		if bytes.Equal(f.Src(), mac) {
			out = append(out, f)
		}
	}
	return out
}

// announcements keeps the frames that announce anything, or come from mac:
// on bad input not one of them may leave.
func announcements(fs []wiretest.Frame, mac net.HardwareAddr) []wiretest.Frame {
	var out []wiretest.Frame
	for _, f := range fs {
		if _, ok := f.Announcement(); ok || bytes.Equal(f.Src(), mac) {
			out = append(out, f)
		}
	}
	return out
}

func describe(fs []wiretest.Frame) string {
	var b strings.Builder
	for _, f := range fs {
		fmt.Fprintf(&b, "\n  %s vlan %d %x", f.At.Format("15:04:05.000000"), f.VLAN, f.Data)
	}
	return b.String()
}

// run runs a program inside ns and waits for it.
func run(t *testing.T, ns *netlab.NS, name string, args ...string) proctest.Result {
	t.Helper()
	return proctest.Start(t, ns, name, args...).Wait(t, 30*time.Second)
}

// announce runs the announce binary inside ns. Every run names its
// resolvers' sources, so a machine's own xenstore, libvirt or config file
// cannot change the outcome.
func (l *lab) announce(t *testing.T, args ...string) proctest.Result {
	t.Helper()
	return run(t, l.host, l.bin, l.hermetic(args)...)
}

func (l *lab) hermetic(args []string) []string {
	out := append([]string(nil), args...)
	has := func(flag string) bool {
		for _, a := range args {
			if a == flag || strings.HasPrefix(a, flag+"=") {
				return true
			}
		}
		return false
	}
	if !has("--config") {
		out = append(out, "--config", l.emptyConfig)
	}
	if !has("--xenstore") {
		out = append(out, "--xenstore", "off")
	}
	if !has("--libvirt-dir") {
		out = append(out, "--libvirt-dir", l.empty)
	}
	if !has("--ovsdb") {
		out = append(out, "--ovsdb", "off")
	}
	return out
}

// signal stops a long-running program (announce sniff) and waits for it.
func signal(t *testing.T, p *proctest.Proc, sig syscall.Signal) proctest.Result {
	t.Helper()
	if err := p.Signal(sig); err != nil {
		t.Fatal(err)
	}
	return p.Wait(t, 10*time.Second)
}
