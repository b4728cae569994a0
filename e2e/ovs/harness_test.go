//go:build linux

// Package ovs_test runs the real announce binary against a private Open
// vSwitch (userspace datapath) in network namespaces: an OVS host with a
// trunk uplink to a "switch" namespace, and guests behind veth VIFs.
package ovs_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/ovstest"
	"github.com/selfannounce/selfannounce/internal/proctest"
	"github.com/selfannounce/selfannounce/internal/testbin"
	"github.com/selfannounce/selfannounce/internal/testenv"
	"github.com/selfannounce/selfannounce/internal/wiretest"
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
	at, err := wiretest.NewToggler(h.t, h.guest).Set(guestEnd(vif), true)
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
type daemonProc struct{ *proctest.Proc }

func startDaemon(t *testing.T, bin string, ns *netlab.NS, args ...string) daemonProc {
	t.Helper()
	d := daemonProc{proctest.Start(t, ns, bin, append([]string{"daemon", "--log-format", "json", "--log-level", "debug"}, args...)...)}
	t.Cleanup(func() {
		d.Stop(5 * time.Second)
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.Stderr())
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

// record adapts a predicate on JSON records to the daemon's log lines.
func record(pred func(map[string]any) bool) func(proctest.Log) bool {
	return func(l proctest.Log) bool { return l.Fields != nil && pred(l.Fields) }
}

// waitLog waits for a log line matching pred, from the start of the log.
func (d daemonProc) waitLog(timeout time.Duration, pred func(map[string]any) bool) bool {
	return len(d.WaitLogs(timeout, 1, record(pred))) > 0
}

// count returns how many log lines match pred.
func (d daemonProc) count(pred func(map[string]any) bool) int {
	return len(d.Logs(record(pred)))
}

func portEvent(vif, kind string) func(map[string]any) bool {
	return func(m map[string]any) bool {
		ev, _ := m["event"].(string)
		return m["msg"] == "OVS port event" && strings.HasPrefix(ev, kind+" br0/"+vif+" ")
	}
}

// capture records every frame received on one link.
type capture struct{ *wiretest.Capture }

func startCapture(t *testing.T, ns *netlab.NS, ifname string) capture {
	t.Helper()
	return capture{wiretest.Start(t, ns, ifname, wiretest.In)}
}

// from returns the frames whose source is mac, in arrival order.
func (c capture) from(mac net.HardwareAddr) []wiretest.Frame {
	return c.Frames(wiretest.From(mac))
}

// waitFrom waits until at least n frames from mac have arrived.
func (c capture) waitFrom(mac net.HardwareAddr, n int, timeout time.Duration) []wiretest.Frame {
	return c.WaitFor(timeout, n, wiretest.From(mac))
}

const etherRARP = 0x8035

func rarps(fs []wiretest.Frame) []wiretest.Frame {
	var out []wiretest.Frame
	for _, f := range fs {
		if f.EtherType() == etherRARP {
			out = append(out, f)
		}
	}
	return out
}
