//go:build linux

// Package integrations_test runs the real announce binary against the
// hypervisor integrations it selects guests through: xenstore (--domid,
// --vm-uuid, through the byte-exact xenstoretest server, as no xenstored can
// run without the hypervisor) and libvirt (--domain and the daemon's resume
// events, through real private libvirtds in network namespaces). What counts
// is what reaches a switch namespace beyond the host's uplink, the exit
// status, and what the command prints.
package integrations_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/selfannounce/selfannounce/announce/sniff"
	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/proctest"
	"github.com/selfannounce/selfannounce/internal/testbin"
	"github.com/selfannounce/selfannounce/internal/testenv"
	"github.com/selfannounce/selfannounce/internal/wiretest"
)

// host is a hypervisor host: namespace ns with bridge br0 whose only
// non-VM port, up0, leads to the switch namespace sw (its end: swp).
type host struct {
	ns, sw *netlab.NS
}

func newHost(t *testing.T, role string) *host {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "ip", "bridge")
	h := &host{ns: netlab.TestNS(t, role), sw: netlab.TestNS(t, role+"sw")}
	if _, err := h.ns.Sh(fmt.Sprintf(`
ip link add br0 type bridge stp_state 0 forward_delay 0
ip link set br0 up
ip link add up0 type veth peer name swp netns %s
ip link set up0 master br0
ip link set up0 up
`, h.sw.Name)); err != nil {
		t.Fatal(err)
	}
	h.sw.MustRun(t, "ip", "link", "set", "swp", "up")
	return h
}

// addVif plugs a netback-like port: a veth on br0 whose other end sits in
// the guest namespace g, down, so the vif has no carrier until the "guest"
// connects (raiseCarrier).
func (h *host) addVif(t *testing.T, g *netlab.NS, name, peer string) {
	t.Helper()
	if _, err := h.ns.Sh(fmt.Sprintf(`
ip link add %[1]s type veth peer name %[2]s netns %[3]s
ip link set %[1]s address fe:ff:ff:ff:ff:ff
ip link set %[1]s master br0
ip link set %[1]s up
`, name, peer, g.Name)); err != nil {
		t.Fatal(err)
	}
}

// addTap plugs an emulated-NIC tap on br0, admin up; it has no carrier
// until a process opens it (openTap).
func (h *host) addTap(t *testing.T, name string) {
	t.Helper()
	if _, err := h.ns.Sh(fmt.Sprintf(`
ip tuntap add dev %[1]s mode tap
ip link set %[1]s master br0
ip link set %[1]s up
`, name)); err != nil {
		t.Fatal(err)
	}
}

// openTap attaches to the tap as QEMU would (which raises its carrier) and
// returns the fd: what is written to it enters the host from the guest.
func (h *host) openTap(t *testing.T, name string) int {
	t.Helper()
	fd := -1
	err := h.ns.Do(func() error {
		var err error
		fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
		return unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	})
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		t.Fatalf("open tap %s: %v", name, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// guestFrame is a broadcast frame from the guest that is no announcement
// (local experimental ethertype), so the switch can tell it from ours.
func guestFrame(mac net.HardwareAddr) []byte {
	b := make([]byte, 60)
	copy(b, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(b[6:], mac)
	b[12], b[13] = 0x88, 0xb5
	return b
}

// seen is one announcement the switch received.
type seen struct {
	at time.Time
	a  sniff.Announcement
}

// capture records every frame arriving on one interface, from the moment
// startCapture returns, with kernel timestamps on the test's clock.
type capture struct{ *wiretest.Capture }

func startCapture(t *testing.T, ns *netlab.NS, ifname string) capture {
	t.Helper()
	return capture{wiretest.Start(t, ns, ifname, wiretest.In)}
}

// announcements returns what the switch received announcing mac, in order.
func (c capture) announcements(mac string) []seen {
	var out []seen
	for _, f := range c.Frames(nil) {
		if a, ok := f.Announcement(); ok && (mac == "" || a.MAC.String() == mac) {
			out = append(out, seen{f.At, a})
		}
	}
	return out
}

// anyAnnouncements returns every announcement the switch received.
func (c capture) anyAnnouncements() []seen { return c.announcements("") }

// count returns how many announcements of kind k (and, when ip is not
// empty, for that address) are in ss.
func count(ss []seen, k sniff.Kind, ip string) int {
	n := 0
	for _, s := range ss {
		if s.a.Kind == k && (ip == "" || s.a.IP.String() == ip) {
			n++
		}
	}
	return n
}

func describe(ss []seen) string {
	var b strings.Builder
	for _, s := range ss {
		fmt.Fprintf(&b, "\n  %s %s %s %v", s.at.Format("15:04:05.000000"), s.a.Kind, s.a.MAC, s.a.IP)
	}
	if b.Len() == 0 {
		return " (none)"
	}
	return b.String()
}

// writeConfig writes a YAML config into a temp dir and returns its path.
func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// records returns the JSON log records with message msg.
func records(src interface {
	Logs(func(proctest.Log) bool) []proctest.Log
}, msg string) []map[string]any {
	var out []map[string]any
	for _, l := range src.Logs(proctest.Msg(msg)) {
		out = append(out, l.Fields)
	}
	return out
}

// startAnnounce starts the real binary in ns with a JSON log.
func startAnnounce(t *testing.T, ns *netlab.NS, args ...string) *proctest.Proc {
	t.Helper()
	return proctest.Start(t, ns, testbin.Announce(t), append([]string{"--log-format", "json"}, args...)...)
}

// runAnnounce runs the one-shot command to completion (bounded).
func runAnnounce(t *testing.T, ns *netlab.NS, args ...string) proctest.Result {
	t.Helper()
	return waitAnnounce(t, startAnnounce(t, ns, args...))
}

func waitAnnounce(t *testing.T, p *proctest.Proc) proctest.Result {
	t.Helper()
	r := p.Wait(t, 60*time.Second)
	t.Logf("announce %s -> exit %d in %v", strings.Join(p.Cmd.Args[5:], " "), r.Code, r.Took.Round(time.Millisecond))
	return r
}

// expectError checks a failed run: the exit status, and that the error is
// one line naming the problem.
func expectError(t *testing.T, r proctest.Result, code int, substr string) {
	t.Helper()
	if r.Code != code {
		t.Fatalf("exit %d, want %d; stderr:\n%s", r.Code, code, r.Output)
	}
	last := r.LastLine()
	if !strings.HasPrefix(last, "announce: ") || !strings.Contains(last, substr) {
		t.Fatalf("last stderr line %q: want \"announce: ...%s...\"; stderr:\n%s", last, substr, r.Output)
	}
}

// daemonProc is `announce daemon` running in a host's namespace.
type daemonProc struct {
	*proctest.Proc
	ns *netlab.NS
}

// startDaemon runs the real daemon with a JSON debug log and metrics on the
// namespace's loopback, and waits until it watches the links.
func startDaemon(t *testing.T, ns *netlab.NS, cfg string) *daemonProc {
	t.Helper()
	d := &daemonProc{ns: ns, Proc: proctest.Start(t, ns, testbin.Announce(t),
		"--log-format", "json", "--log-level", "debug", "daemon", "--config", cfg, "--metrics-listen", metricsAddr)}
	t.Cleanup(func() {
		if errors.Is(d.Stop(5*time.Second), proctest.ErrKilled) {
			t.Errorf("daemon ignored SIGTERM for 5 s")
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.Output())
		}
	})
	d.waitLog(t, "watching", 1, 20*time.Second)
	return d
}

// waitLog waits until the daemon has logged msg at least n times.
func (d *daemonProc) waitLog(t *testing.T, msg string, n int, within time.Duration) []map[string]any {
	t.Helper()
	d.WaitLogs(within, n, proctest.Msg(msg))
	recs := records(d, msg)
	if len(recs) < n {
		select {
		case <-d.Exited():
			t.Fatalf("daemon exited waiting for %q:\n%s", msg, d.Output())
		default:
		}
		t.Fatalf("daemon logged %q %d times within %v, want %d", msg, len(recs), within, n)
	}
	return recs
}

const metricsAddr = "127.0.0.1:9474"

// metric scrapes the daemon's Prometheus endpoint from inside its namespace
// and returns the value of the sample named exactly series (0 if absent).
func (d *daemonProc) metric(t *testing.T, series string) float64 {
	t.Helper()
	m, err := proctest.Metrics(d.ns, metricsAddr)
	if err != nil {
		t.Fatalf("scraping metrics: %v", err)
	}
	return m[series]
}

func writeFD(fd int, b []byte) (int, error) { return unix.Write(fd, b) }

func mustMAC(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
