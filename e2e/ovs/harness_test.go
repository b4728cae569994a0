//go:build linux

// Package ovs_test runs the real announce binary against a private Open
// vSwitch (userspace datapath) in network namespaces: an OVS host with a
// trunk uplink to a "switch" namespace, and guests behind veth VIFs.
package ovs_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/ovstest"
	"github.com/selfannounce/selfannounce/internal/testbin"
	"github.com/selfannounce/selfannounce/internal/testenv"
)

func requireE2E(t *testing.T) string {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, append([]string{"ip"}, ovstest.Commands...)...)
	return testbin.Announce(t)
}

// host is an OVS host: bridge br0 (netdev datapath) with trunk0, a veth
// whose other end sw0 lives in the switch namespace, plus VIFs whose guest
// ends live in the guest namespace.
type host struct {
	t     *testing.T
	ns    *netlab.NS
	sw    *netlab.NS
	guest *netlab.NS
	ovs   *ovstest.OVS
}

func newHost(t *testing.T) *host {
	t.Helper()
	h := &host{t: t, ns: netlab.TestNS(t, "ovsh"), sw: netlab.TestNS(t, "ovssw"), guest: netlab.TestNS(t, "ovsg")}
	for _, ns := range []*netlab.NS{h.ns, h.sw, h.guest} {
		// No IPv6 autoconfiguration chatter: the guests must be silent.
		ns.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	}
	h.ns.MustRun(t, "ip", "link", "add", "trunk0", "type", "veth", "peer", "name", "sw0", "netns", h.sw.Name)
	h.ns.MustRun(t, "ip", "link", "set", "trunk0", "up")
	h.sw.MustRun(t, "ip", "link", "set", "sw0", "up")
	h.ovs = ovstest.Start(t, h.ns)
	h.ovs.AddBridge(t, "br0")
	h.ovs.Vsctl(t, "add-port", "br0", "trunk0")
	return h
}

// guestEnd names the guest's side of a VIF.
func guestEnd(vif string) string { return "g" + strings.ReplaceAll(vif, ".", "_") }

// addVif plugs a VIF the way XenServer's vif-openvswitch does: in the
// bridge, admin-up, tagged, with external_ids:attached-mac. It has carrier
// only when the guest's end is up. The guest's own netdev gets a different
// MAC, so every frame from mac was made by the agent.
func (h *host) addVif(vif string, tag int, mac net.HardwareAddr, carrier bool) int {
	t := h.t
	t.Helper()
	g := guestEnd(vif)
	h.ns.MustRun(t, "ip", "link", "add", vif, "type", "veth", "peer", "name", g, "netns", h.guest.Name)
	h.ns.MustRun(t, "ip", "link", "set", vif, "up")
	h.guest.MustRun(t, "ip", "link", "set", g, "address", "02:00:00:00:ee:"+fmt.Sprintf("%02x", tag))
	if carrier {
		h.guest.MustRun(t, "ip", "link", "set", g, "up")
	}
	args := []string{"add-port", "br0", vif}
	if tag > 0 {
		args = append(args, "tag="+strconv.Itoa(tag))
	}
	args = append(args, "--", "set", "Interface", vif, "external_ids:attached-mac="+mac.String())
	h.ovs.Vsctl(t, args...)
	return h.ovs.OFPort(t, vif)
}

// carrierUp brings the guest's end of vif up, which raises carrier on the
// VIF, and returns the moment just before: an ioctl, not `ip`, so no
// process start-up sits between the timestamp and the event.
func (h *host) carrierUp(vif string) time.Time {
	h.t.Helper()
	var at time.Time
	err := h.guest.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		ifr, err := unix.NewIfreq(guestEnd(vif))
		if err != nil {
			return err
		}
		if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
			return err
		}
		ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
		at = time.Now()
		return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
	})
	if err != nil {
		h.t.Fatal(err)
	}
	return at
}

func (h *host) carrierDown(vif string) {
	h.guest.MustRun(h.t, "ip", "link", "set", guestEnd(vif), "down")
}

// config writes the daemon's config: no metrics endpoint, the private OVS's
// socket directory, and extra.
func (h *host) config(extra string) string {
	h.t.Helper()
	p := filepath.Join(h.t.TempDir(), "config.yaml")
	body := fmt.Sprintf("metrics: {listen: \"\"}\novs: {rundir: %q}\n%s", h.ovs.RunDir(), extra)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		h.t.Fatal(err)
	}
	return p
}

// fdb returns `ovs-appctl fdb/show br0`.
func (h *host) fdb() string { return h.ovs.Appctl(h.t, "fdb/show", "br0") }

// fdbHas reports whether the FDB lists mac on ofport in vlan.
func fdbHas(out string, ofport, vlan int, mac net.HardwareAddr) bool {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == strconv.Itoa(ofport) && f[1] == strconv.Itoa(vlan) && strings.EqualFold(f[2], mac.String()) {
			return true
		}
	}
	return false
}

// daemonProc is a running `announce daemon` with its JSON log.
type daemonProc struct {
	t      *testing.T
	cmd    interface{ Wait() error }
	proc   *os.Process
	mu     sync.Mutex
	lines  []map[string]any
	raw    []string
	exited chan struct{}
}

func startDaemon(t *testing.T, bin string, ns *netlab.NS, args ...string) *daemonProc {
	t.Helper()
	cmd := ns.Cmd(bin, append([]string{"daemon", "--log-format", "json", "--log-level", "debug"}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemonProc{t: t, cmd: cmd, proc: cmd.Process, exited: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<16), 1<<20)
		for sc.Scan() {
			var m map[string]any
			json.Unmarshal(sc.Bytes(), &m)
			d.mu.Lock()
			d.lines = append(d.lines, m)
			d.raw = append(d.raw, sc.Text())
			d.mu.Unlock()
		}
		cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		d.proc.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(5 * time.Second):
			d.proc.Kill()
			<-d.exited
		}
		if t.Failed() {
			d.mu.Lock()
			t.Logf("daemon log:\n%s", strings.Join(d.raw, "\n"))
			d.mu.Unlock()
		}
	})
	if !d.waitLog(10*time.Second, msgIs("OVSDB state read")) {
		t.Fatal("daemon did not read OVSDB within 10s")
	}
	return d
}

func msgIs(s string) func(map[string]any) bool {
	return func(m map[string]any) bool { return m["msg"] == s }
}

// waitLog waits for a log line matching pred, from the start of the log.
func (d *daemonProc) waitLog(timeout time.Duration, pred func(map[string]any) bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		d.mu.Lock()
		for _, m := range d.lines {
			if m != nil && pred(m) {
				d.mu.Unlock()
				return true
			}
		}
		d.mu.Unlock()
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-d.exited:
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// count returns how many log lines match pred.
func (d *daemonProc) count(pred func(map[string]any) bool) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, m := range d.lines {
		if m != nil && pred(m) {
			n++
		}
	}
	return n
}

func portEvent(vif, kind string) func(map[string]any) bool {
	return func(m map[string]any) bool {
		ev, _ := m["event"].(string)
		return m["msg"] == "OVS port event" && strings.HasPrefix(ev, kind+" br0/"+vif+" ")
	}
}

// rx is one frame seen on a capture, without its 802.1Q tag.
type rx struct {
	at    time.Time
	frame []byte
	vlan  int // -1 when untagged
}

func (r rx) etherType() uint16 { return binary.BigEndian.Uint16(r.frame[12:]) }
func (r rx) src() net.HardwareAddr {
	return net.HardwareAddr(r.frame[6:12])
}

// capture records every frame received on one link, reading VLAN tags from
// PACKET_AUXDATA because the kernel strips them on receive.
type capture struct {
	fd     int
	mu     sync.Mutex
	frames []rx
}

func startCapture(t *testing.T, ns *netlab.NS, ifname string) *capture {
	t.Helper()
	proto := int(htons(unix.ETH_P_ALL))
	c := &capture{fd: -1}
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return err
		}
		c.fd = fd
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); err != nil {
			return err
		}
		// Kernel receive timestamps: the test's own scheduling delays
		// must not count as the agent's latency.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
			return err
		}
		tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifi.Index})
	})
	if err != nil {
		if c.fd >= 0 {
			unix.Close(c.fd)
		}
		t.Fatalf("capture on %s: %v", ifname, err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go c.loop(stop, done)
	t.Cleanup(func() { close(stop); <-done; unix.Close(c.fd) })
	return c
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *capture) loop(stop, done chan struct{}) {
	defer close(done)
	buf := make([]byte, 65536)
	oob := make([]byte, 256)
	for {
		select {
		case <-stop:
			return
		default:
		}
		n, oobn, _, from, err := unix.Recvmsg(c.fd, buf, oob, 0)
		at := time.Now()
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if n < 14 {
			continue
		}
		r := rx{at: at, frame: append([]byte(nil), buf[:n]...), vlan: -1}
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		for _, m := range msgs {
			if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= 16 {
				r.at = time.Unix(int64(binary.NativeEndian.Uint64(m.Data[0:])), int64(binary.NativeEndian.Uint64(m.Data[8:])))
			}
			if m.Header.Level == unix.SOL_PACKET && m.Header.Type == unix.PACKET_AUXDATA && len(m.Data) >= 20 {
				if binary.NativeEndian.Uint32(m.Data[0:])&unix.TP_STATUS_VLAN_VALID != 0 {
					r.vlan = int(binary.NativeEndian.Uint16(m.Data[16:]) & 0xfff)
				}
			}
		}
		if r.vlan < 0 && n >= 18 && binary.BigEndian.Uint16(r.frame[12:]) == 0x8100 {
			r.vlan = int(binary.BigEndian.Uint16(r.frame[14:]) & 0xfff)
			r.frame = append(r.frame[:12:12], r.frame[16:]...)
		}
		c.mu.Lock()
		c.frames = append(c.frames, r)
		c.mu.Unlock()
	}
}

// from returns the frames whose source is mac, in arrival order.
func (c *capture) from(mac net.HardwareAddr) []rx {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []rx
	for _, r := range c.frames {
		if bytes.Equal(r.src(), mac) {
			out = append(out, r)
		}
	}
	return out
}

// waitFrom waits until at least n frames from mac have arrived.
func (c *capture) waitFrom(mac net.HardwareAddr, n int, timeout time.Duration) []rx {
	deadline := time.Now().Add(timeout)
	for {
		fs := c.from(mac)
		if len(fs) >= n || time.Now().After(deadline) {
			return fs
		}
		time.Sleep(10 * time.Millisecond)
	}
}

const etherRARP = 0x8035

func rarps(fs []rx) []rx {
	var out []rx
	for _, f := range fs {
		if f.etherType() == etherRARP {
			out = append(out, f)
		}
	}
	return out
}
