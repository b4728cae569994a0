//go:build linux

package integrations_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/announce/libvirtev"
	"github.com/selfannounce/selfannounce/announce/sniff"
	"github.com/selfannounce/selfannounce/internal/libvirttest"
)

// lvHost is a KVM host: a host lab (br0, uplink to a switch) with a
// private libvirtd running in its namespace, so the vnetN taps it creates
// are on that br0 and the announce binary, run in the same namespace, sees
// them.
type lvHost struct {
	*host
	lv *libvirttest.Daemon
}

func newLVHost(t *testing.T, role string) *lvHost {
	t.Helper()
	libvirttest.Require(t)
	h := newHost(t, role)
	return &lvHost{host: h, lv: libvirttest.Start(t, libvirttest.Options{NS: h.ns})}
}

// statusDir is where this libvirtd keeps live domain XML, seen from outside
// its mount namespace (inside, it is /run/libvirt/qemu).
func (h *lvHost) statusDir() string { return filepath.Join(h.lv.Dir, "run", "qemu") }

func (h *lvHost) interfaces(t *testing.T, domain string) []libvirtev.Iface {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ifs, err := libvirtev.DomainInterfaces(ctx, h.lv.Socket, domain)
	if err != nil {
		t.Fatal(err)
	}
	return ifs
}

// TestLibvirtDomainSelector announces every interface of a running libvirt
// domain by name, with the MACs libvirtd reports; and refuses, with the
// documented status and no frame, an unknown domain or an unreachable
// libvirt.
func TestLibvirtDomainSelector(t *testing.T) {
	const name, macA, macB, ipA = "g-sel", "52:54:00:6a:00:01", "52:54:00:6a:00:02", "10.61.0.5"
	h := newLVHost(t, "lvsel")
	h.lv.DefineAndStart(t, name, libvirttest.DomainXML(name,
		libvirttest.Interface{Bridge: "br0", MAC: macA}, libvirttest.Interface{Bridge: "br0", MAC: macB}))
	ifs := h.interfaces(t, name)
	if len(ifs) != 2 {
		t.Fatalf("libvirt lists %+v, want two interfaces", ifs)
	}
	// Addresses come from the config (libvirt has none for a bridged NIC);
	// the entry applies only where its MAC is the one libvirt reports.
	cfg := writeConfig(t, fmt.Sprintf("xenstore: {path: \"off\"}\nguests:\n  - port: \"vnet*\"\n    mac: %q\n    ips: [%q]\n", macA, ipA))

	t.Run("announce", func(t *testing.T) {
		cap := startCapture(t, h.sw, "swp")
		r := runAnnounce(t, h.ns, "--domain", name, "--libvirt-socket", h.lv.Socket, "--config", cfg)
		if r.Code != 0 {
			t.Fatalf("exit %d, want 0:\n%s", r.Code, r.Output)
		}
		a, b := cap.announcements(macA), cap.announcements(macB)
		if count(a, sniff.RARP, "") != 5 || count(a, sniff.GARPRequest, ipA) != 5 || len(a) != 10 {
			t.Errorf("%s (%s): want 5 rounds of RARP + GARP %s; switch saw:%s", macA, ifs[0].Dev, ipA, describe(a))
		}
		if count(b, sniff.RARP, "") != 5 || len(b) != 5 {
			t.Errorf("%s (%s): want 5 RARPs and nothing else; switch saw:%s", macB, ifs[1].Dev, describe(b))
		}
		got := map[string]string{}
		for _, rec := range records(r, "announcing") {
			got[fmt.Sprint(rec["port"])] = fmt.Sprint(rec["mac"])
		}
		for _, i := range ifs {
			if got[i.Dev] != i.MAC.String() {
				t.Errorf("announcing records %v: want %s with %s", got, i.Dev, i.MAC)
			}
		}
	})

	t.Run("bad-input", func(t *testing.T) {
		cap := startCapture(t, h.sw, "swp")
		for _, tc := range []struct {
			name   string
			args   []string
			code   int
			substr string
		}{
			{"unknown-domain", []string{"--domain", "no-such-guest", "--libvirt-socket", h.lv.Socket}, 3, "no-such-guest"},
			{"unknown-domain-from-xml", []string{"--domain", "no-such-guest", "--libvirt-socket", "/nonexistent/libvirt-sock", "--libvirt-dir", h.statusDir()}, 3, "no-such-guest"},
			{"no-libvirt", []string{"--domain", name, "--libvirt-socket", "/nonexistent/libvirt-sock", "--libvirt-dir", "/nonexistent/qemu"}, 4, "/nonexistent/libvirt-sock"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := runAnnounce(t, h.ns, append(tc.args, "--config", cfg)...)
				expectError(t, r, tc.code, tc.substr)
			})
		}
		time.Sleep(200 * time.Millisecond)
		if ss := cap.anyAnnouncements(); len(ss) != 0 {
			t.Errorf("bad input put frames on the wire:%s", describe(ss))
		}
	})
}

// migration is a source host and a destination host (with the switch
// beyond its uplink) and a running guest on the source.
type migration struct {
	src, dst *lvHost
	name     string
	mac      string
	ip       string
}

func newMigration(t *testing.T, role, name, mac, ip string) *migration {
	t.Helper()
	m := &migration{src: newLVHost(t, role+"s"), dst: newLVHost(t, role+"d"), name: name, mac: mac, ip: ip}
	m.src.lv.DefineAndStart(t, name, libvirttest.DomainXML(name, libvirttest.Interface{Bridge: "br0", MAC: mac}))
	return m
}

// daemonConfig points the daemon at the destination's libvirtd, and gives
// the guest's address for any vnet (guests entries are keyed by port).
func (m *migration) daemonConfig(t *testing.T, extra string) string {
	return writeConfig(t, fmt.Sprintf(`libvirt:
  socket: %q
  status-dir: %q
xenstore: {path: "off"}
ovs: {db: "off"}
guests:
  - port: "vnet*"
    mac: %q
    ips: [%q]
%s`, m.dst.lv.Socket, m.dst.statusDir(), m.mac, m.ip, extra))
}

// bursts returns the daemon's "burst" records for mac.
func bursts(d *daemonProc, mac string) []map[string]any {
	var out []map[string]any
	for _, r := range records(d, "burst") {
		if r["mac"] == mac {
			out = append(out, r)
		}
	}
	return out
}

// waitBursts waits until the daemon logged n bursts for mac, then lets
// straggling triggers of the same arrival come in, and returns them all.
func waitBursts(t *testing.T, d *daemonProc, mac string, n int, within time.Duration) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(within)
	for len(bursts(d, mac)) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d bursts for %s within %v, want %d", len(bursts(d, mac)), mac, within, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	return bursts(d, mac)
}

const suppressed = `selfannounce_bursts_total{result="suppressed"}`

// TestDaemonLibvirtMigration live-migrates a guest onto a host running the
// daemon. QEMU's own RARP on the new vnet is the first sign (guest-frame
// trigger); libvirt's RESUMED/MIGRATED follows for the same arrival and
// must be folded into it: one burst, with the configured address. A plain
// suspend/resume afterwards is no arrival.
func TestDaemonLibvirtMigration(t *testing.T) {
	m := newMigration(t, "dmig", "g-dmig", "52:54:00:6b:00:01", "10.62.0.7")
	d := startDaemon(t, m.dst.ns, m.daemonConfig(t, ""))
	d.waitLog(t, "subscribed to libvirt lifecycle events", 1, 15*time.Second)
	cap := startCapture(t, m.dst.sw, "swp")

	m.src.lv.Migrate(t, m.name, m.dst.lv)
	dev := m.dst.interfaces(t, m.name)[0].Dev
	d.waitLog(t, "libvirt: domain resumed after migration", 1, 15*time.Second)
	bs := waitBursts(t, d, m.mac, 1, 15*time.Second)
	if len(bs) != 1 {
		t.Fatalf("%d bursts for one arrival, want 1: %v", len(bs), bs)
	}
	b := bs[0]
	if b["port"] != dev || b["trigger"] != "guest-frame" || b["result"] != "completed" || b["source"] != "config" {
		t.Errorf("burst %v: want completed on %s, triggered by QEMU's frame (guest-frame), guest from config", b, dev)
	}
	if n := d.metric(t, suppressed); n < 1 {
		t.Errorf("%s = %v: the libvirt event was not counted as suppressed", suppressed, n)
	}
	sup := false
	for _, r := range records(d, "burst suppressed") {
		sup = sup || r["trigger"] == "libvirt-resumed" && r["port"] == dev
	}
	if !sup {
		t.Errorf("no \"burst suppressed\" record for the libvirt-resumed trigger on %s", dev)
	}
	ss := cap.announcements(m.mac)
	// QEMU sends RARP only; GARP is ours, one per round of one burst.
	if n := count(ss, sniff.GARPRequest, m.ip); n != 5 {
		t.Errorf("%d GARPs for %s on the switch, want 5 (one burst):%s", n, m.ip, describe(ss))
	}
	if n := count(ss, sniff.RARP, ""); n != 10 {
		t.Errorf("%d RARPs on the switch, want QEMU's 5 and our 5:%s", n, describe(ss))
	}
	resumed := len(records(d, "libvirt: domain resumed after migration"))

	// Suspend and resume are RESUMED/UNPAUSED: not an arrival.
	m.dst.lv.Virsh(t, "suspend", m.name)
	m.dst.lv.Virsh(t, "resume", m.name)
	time.Sleep(3 * time.Second)
	if n := len(bursts(d, m.mac)); n != 1 {
		t.Errorf("%d bursts after virsh suspend/resume, want still 1", n)
	}
	if n := len(records(d, "libvirt: domain resumed after migration")); n != resumed {
		t.Errorf("suspend/resume was taken for a migration arrival")
	}
	if n := count(cap.announcements(m.mac), sniff.GARPRequest, m.ip); n != 5 {
		t.Errorf("%d GARPs after suspend/resume, want still 5", n)
	}
}

// manualVnets leaves vnets to libvirt's event alone: as if QEMU's RARP had
// been lost, the daemon never arrives them by frame.
const manualVnets = `ports:
  - {match: "vnet*", trigger: manual}
`

// TestDaemonLibvirtResumedAlone: with no guest-frame trigger, libvirt's
// RESUMED/MIGRATED event by itself announces the migrated guest, once.
func TestDaemonLibvirtResumedAlone(t *testing.T) {
	m := newMigration(t, "dres", "g-dres", "52:54:00:6c:00:01", "10.63.0.7")
	d := startDaemon(t, m.dst.ns, m.daemonConfig(t, manualVnets))
	d.waitLog(t, "subscribed to libvirt lifecycle events", 1, 15*time.Second)
	cap := startCapture(t, m.dst.sw, "swp")

	m.src.lv.Migrate(t, m.name, m.dst.lv)
	checkResumedBurst(t, m, d, cap)
}

// checkResumedBurst asserts one burst for the migrated guest, triggered by
// the libvirt event, on the destination vnet, with the configured address.
func checkResumedBurst(t *testing.T, m *migration, d *daemonProc, cap capture) {
	t.Helper()
	dev := m.dst.interfaces(t, m.name)[0].Dev
	bs := waitBursts(t, d, m.mac, 1, 20*time.Second)
	if len(bs) != 1 {
		t.Fatalf("%d bursts for one arrival, want 1: %v", len(bs), bs)
	}
	if b := bs[0]; b["port"] != dev || b["trigger"] != "libvirt-resumed" || b["result"] != "completed" {
		t.Errorf("burst %v: want completed on %s, triggered by libvirt-resumed", b, dev)
	}
	ss := cap.announcements(m.mac)
	if n := count(ss, sniff.GARPRequest, m.ip); n != 5 {
		t.Errorf("%d GARPs for %s on the switch, want 5:%s", n, m.ip, describe(ss))
	}
	ev := records(d, "libvirt: domain resumed after migration")
	if len(ev) != 1 || ev[0]["domain"] != m.name || !strings.Contains(fmt.Sprint(ev[0]["interfaces"]), dev) {
		t.Errorf("resume records %v: want one for %s naming %s", ev, m.name, dev)
	}
}

// TestDaemonLibvirtReconnect restarts the destination libvirtd under the
// running daemon; the daemon resubscribes, and the next migration in is
// announced from libvirt's event.
func TestDaemonLibvirtReconnect(t *testing.T) {
	m := newMigration(t, "drec", "g-drec", "52:54:00:6d:00:01", "10.64.0.7")
	d := startDaemon(t, m.dst.ns, m.daemonConfig(t, manualVnets))
	d.waitLog(t, "subscribed to libvirt lifecycle events", 1, 15*time.Second)

	m.dst.lv.Restart(t)
	d.waitLog(t, "libvirt event subscription down, retrying", 1, 15*time.Second)
	d.waitLog(t, "subscribed to libvirt lifecycle events", 2, 40*time.Second)
	cap := startCapture(t, m.dst.sw, "swp")

	m.src.lv.Migrate(t, m.name, m.dst.lv)
	checkResumedBurst(t, m, d, cap)
}
