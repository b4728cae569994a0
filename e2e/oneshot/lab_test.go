//go:build linux

// Package oneshot_test runs the real announce binary against kernel bridges
// in network namespaces and judges it by what reaches the wire and the
// bridges' forwarding tables.
package oneshot_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/selfannounce/selfannounce/announce/sniff"
	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/testbin"
	"github.com/selfannounce/selfannounce/internal/testenv"
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
	waitForwarding(t, l.host, "up0", "vif3.0", "vif5.0")
	waitForwarding(t, l.sw, "sw0", "sw1")
	return l
}

func mustSh(t *testing.T, ns *netlab.NS, script string) {
	t.Helper()
	if _, err := ns.Sh(script); err != nil {
		t.Fatal(err)
	}
}

func waitForwarding(t *testing.T, ns *netlab.NS, ports ...string) {
	t.Helper()
	for _, p := range ports {
		eventually(t, 5*time.Second, func() error {
			st, err := ns.Run("cat", "/sys/class/net/"+p+"/brport/state")
			if err != nil {
				return err
			}
			if st != "3" {
				return fmt.Errorf("%s: port %s in STP state %s, want 3 (forwarding)", ns.Name, p, st)
			}
			return nil
		})
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
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		c, err := packet.Listen(ifi, packet.Raw, 0, nil)
		if err != nil {
			return err
		}
		defer c.Close()
		for _, f := range frames {
			if _, err := c.WriteTo(f, &packet.Addr{HardwareAddr: net.HardwareAddr(f[:6])}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("injecting on %s in %s: %v", ifname, ns.Name, err)
	}
}

// seen is one frame a capture received, with its 802.1Q tag put back where
// the sender wrote it (the kernel moves it to PACKET_AUXDATA on receive).
type seen struct {
	At   time.Time // kernel receive time
	Data []byte
	VLAN uint16
}

func (s seen) src() net.HardwareAddr { return net.HardwareAddr(s.Data[6:12]) }

// capture records every frame arriving at one interface.
type capture struct {
	ifname string
	pc     *packet.Conn
	rc     syscall.RawConn
	index  int
	mu     sync.Mutex
	frames []seen
	err    error
	done   chan struct{}
	once   sync.Once
}

// startCapture opens a packet socket on ifname inside ns; frames arriving
// after it returns are recorded. It stops at test end if not before.
func startCapture(t *testing.T, ns *netlab.NS, ifname string) *capture {
	t.Helper()
	c := &capture{ifname: ifname, done: make(chan struct{})}
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		c.index = ifi.Index
		if c.pc, err = packet.Listen(ifi, packet.Raw, unix.ETH_P_ALL, nil); err != nil {
			return err
		}
		if c.rc, err = c.pc.SyscallConn(); err != nil {
			return err
		}
		var serr error
		err = c.rc.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
			}
		})
		return errors.Join(err, serr)
	})
	if err != nil {
		t.Fatalf("capture on %s in %s: %v", ifname, ns.Name, err)
	}
	go c.loop()
	t.Cleanup(func() { c.stop() })
	return c
}

func (c *capture) loop() {
	defer close(c.done)
	defer c.pc.Close()
	const tag = 4
	buf := make([]byte, tag+65536)
	oob := make([]byte, 512)
	for {
		var (
			n, oobn int
			from    unix.Sockaddr
			rerr    error
		)
		err := c.rc.Read(func(fd uintptr) bool {
			n, oobn, _, from, rerr = unix.Recvmsg(int(fd), buf[tag:], oob, 0)
			return rerr != unix.EAGAIN
		})
		if err != nil {
			return // the deadline set by stop
		}
		if errors.Is(rerr, unix.EINTR) {
			continue
		}
		if rerr != nil {
			c.mu.Lock()
			c.err = rerr
			c.mu.Unlock()
			return
		}
		sll, ok := from.(*unix.SockaddrLinklayer)
		if !ok || sll.Ifindex != c.index || sll.Pkttype == unix.PACKET_OUTGOING || n < 14 {
			continue
		}
		s := seen{At: time.Now()}
		vlanValid, tci, tpid := false, uint16(0), uint16(0x8100)
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		for _, m := range msgs {
			switch {
			case m.Header.Level == unix.SOL_PACKET && m.Header.Type == unix.PACKET_AUXDATA:
				aux := (*unix.TpacketAuxdata)(unsafe.Pointer(&m.Data[0]))
				if aux.Status&unix.TP_STATUS_VLAN_VALID != 0 {
					vlanValid, tci = true, aux.Vlan_tci
					if aux.Status&unix.TP_STATUS_VLAN_TPID_VALID != 0 {
						tpid = aux.Vlan_tpid
					}
				}
			case m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS:
				ts := (*unix.Timespec)(unsafe.Pointer(&m.Data[0]))
				s.At = time.Unix(ts.Unix())
			}
		}
		f := buf[tag : tag+n]
		if vlanValid {
			copy(buf, buf[tag:tag+12])
			binary.BigEndian.PutUint16(buf[12:], tpid)
			binary.BigEndian.PutUint16(buf[14:], tci)
			f = buf[:tag+n]
			s.VLAN = tci & 0xfff
		}
		s.Data = append([]byte(nil), f...)
		c.mu.Lock()
		c.frames = append(c.frames, s)
		c.mu.Unlock()
	}
}

// stop lets frames already on their way arrive, closes the socket and
// returns what was received.
func (c *capture) stop() []seen {
	c.once.Do(func() {
		c.pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		<-c.done
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]seen(nil), c.frames...)
}

func (c *capture) result(t *testing.T) []seen {
	t.Helper()
	fs := c.stop()
	if c.err != nil {
		t.Fatalf("capture on %s: %v", c.ifname, c.err)
	}
	return fs
}

// from keeps the frames whose Ethernet source is mac.
func from(fs []seen, mac net.HardwareAddr) []seen {
	var out []seen
	for _, f := range fs {
		if bytes.Equal(f.src(), mac) {
			out = append(out, f)
		}
	}
	return out
}

// announcements keeps the frames that announce anything, or come from mac:
// on bad input not one of them may leave.
func announcements(fs []seen, mac net.HardwareAddr) []seen {
	var out []seen
	for _, f := range fs {
		if _, ok := sniff.Decode(f.Data); ok || bytes.Equal(f.src(), mac) {
			out = append(out, f)
		}
	}
	return out
}

func describe(fs []seen) string {
	var b strings.Builder
	for _, f := range fs {
		fmt.Fprintf(&b, "\n  %s vlan %d %x", f.At.Format("15:04:05.000000"), f.VLAN, f.Data)
	}
	return b.String()
}

// result is how a process ended.
type result struct {
	stdout, stderr string
	code           int
}

// run runs a program inside ns and waits for it.
func run(t *testing.T, ns *netlab.NS, name string, args ...string) result {
	t.Helper()
	p := start(t, ns, name, args...)
	return p.wait(t, 30*time.Second)
}

// announce runs the announce binary inside ns. Every run names its
// resolvers' sources, so a machine's own xenstore, libvirt or config file
// cannot change the outcome.
func (l *lab) announce(t *testing.T, args ...string) result {
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

// proc is a program running in a namespace.
type proc struct {
	cmd            *exec.Cmd
	stdout, stderr *syncBuf
	done           chan struct{}
	err            error
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// start starts a program inside ns; it is killed at test end if still
// running, before netlab removes the namespace.
func start(t *testing.T, ns *netlab.NS, name string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: ns.Cmd(name, args...), stdout: &syncBuf{}, stderr: &syncBuf{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *proc) wait(t *testing.T, d time.Duration) result {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("%s did not exit within %v; stderr: %s", strings.Join(p.cmd.Args, " "), d, p.stderr.String())
	}
	code := p.cmd.ProcessState.ExitCode()
	var ee *exec.ExitError
	if p.err != nil && !errors.As(p.err, &ee) {
		t.Fatalf("%s: %v", strings.Join(p.cmd.Args, " "), p.err)
	}
	return result{stdout: p.stdout.String(), stderr: p.stderr.String(), code: code}
}

// signal stops a long-running program (announce sniff) and waits for it.
func (p *proc) signal(t *testing.T, sig syscall.Signal) result {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		select {
		case <-p.done: // it had already exited
		default:
			t.Fatal(err)
		}
	}
	return p.wait(t, 10*time.Second)
}
