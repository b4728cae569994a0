//go:build linux

package ovs_test

import (
	"context"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/internal/lab"
)

var (
	mac1 = net.HardwareAddr{0x52, 0x54, 0x00, 0x0e, 0x00, 0x01}
	mac2 = net.HardwareAddr{0x52, 0x54, 0x00, 0x0e, 0x00, 0x02}
)

// A VIF on access VLAN 5 joins the bridge admin-up without carrier, as
// XenServer plugs a destination vif before the source VM pauses: nothing
// leaves the host. When carrier rises, the burst leaves the trunk tagged 5
// with the guest MAC (from external_ids:attached-mac) as source, and OVS has
// learned the MAC on the VIF in VLAN 5: the packet-out went through OVS as
// if the guest had sent it.
func TestCarrierOnTaggedVif(t *testing.T) {
	bin := requireE2E(t)
	h := newHost(t)
	cap := startCapture(t, h.sw, "sw0")
	d := startDaemon(t, bin, h.ns, "--config", h.config(""), "--ovsdb", h.ovs.DBAddr())

	ofport := h.addVif("vif1.0", 5, mac1, false)
	if !d.waitLog(5*time.Second, portEvent("vif1.0", "new")) {
		t.Fatal("daemon saw no OVSDB event for the new VIF")
	}
	time.Sleep(time.Second)
	if fs := cap.from(mac1); len(fs) != 0 {
		t.Fatalf("%d frames from the guest MAC left the host before carrier", len(fs))
	}
	if fdbHas(h.fdb(), ofport, 5, mac1) {
		t.Fatal("OVS learned the guest MAC before carrier")
	}

	up := h.carrierUp("vif1.0")
	fs := rarps(cap.waitFrom(mac1, 5, 10*time.Second))
	if len(fs) < 5 {
		t.Fatalf("%d RARPs from %s on the trunk after carrier, want 5 (one QEMU-schedule burst)", len(fs), mac1)
	}
	for i, f := range fs {
		if f.VLAN != 5 {
			t.Errorf("RARP %d left the trunk with VLAN %d, want 5", i, f.VLAN)
		}
		if len(f.Untagged()) != 60 || f.Data[0] != 0xff {
			t.Errorf("RARP %d: %d bytes to %x, want QEMU's 60-byte broadcast", i, len(f.Untagged()), f.Data[:6])
		}
	}
	t.Logf("first RARP on the trunk %v after carrier", fs[0].At.Sub(up))
	if out := h.fdb(); !fdbHas(out, ofport, 5, mac1) {
		t.Errorf("OVS FDB does not show %s on ofport %d VLAN 5:\n%s", mac1, ofport, out)
	}
	time.Sleep(300 * time.Millisecond)
	if n := len(rarps(cap.from(mac1))); n != 5 {
		t.Errorf("%d RARPs in all, want exactly one burst of 5", n)
	}
	if !d.waitLog(10*time.Second, func(m map[string]any) bool {
		return m["msg"] == "burst" && m["port"] == "vif1.0" && m["trigger"] == "carrier" && m["source"] == "ovsdb" && m["result"] == "completed"
	}) {
		t.Error("no completed carrier burst with the attached-mac identity in the daemon log")
	}
}

// ovsdb-server restarts under a running daemon: ports already there are not
// announced again, and a port added after the restart is.
func TestOVSDBRestart(t *testing.T) {
	bin := requireE2E(t)
	h := newHost(t)
	h.addVif("vif1.0", 5, mac1, true)
	cap := startCapture(t, h.sw, "sw0")
	d := startDaemon(t, bin, h.ns, "--config", h.config(""), "--ovsdb", h.ovs.DBAddr())

	h.ovs.RestartDB(t)
	if !d.waitLog(5*time.Second, msgIs("OVSDB connection lost, reconnecting")) {
		t.Fatal("daemon did not notice the ovsdb-server restart")
	}
	// ovs-vswitchd rewrites the ephemeral link and admin state about a
	// second after the restart; give it time to do so.
	time.Sleep(2500 * time.Millisecond)
	if fs := cap.from(mac1); len(fs) != 0 {
		t.Fatalf("%d frames re-announced an existing port after the ovsdb-server restart", len(fs))
	}
	ofport := h.addVif("vif2.0", 7, mac2, true)
	fs := rarps(cap.waitFrom(mac2, 1, 5*time.Second))
	if len(fs) == 0 {
		t.Fatal("a port added after the ovsdb-server restart was not announced")
	}
	if fs[0].VLAN != 7 {
		t.Errorf("RARP left with VLAN %d, want 7", fs[0].VLAN)
	}
	if out := h.fdb(); !fdbHas(out, ofport, 7, mac2) {
		t.Errorf("OVS FDB does not show %s on ofport %d VLAN 7:\n%s", mac2, ofport, out)
	}
	if fs := cap.from(mac1); len(fs) != 0 {
		t.Errorf("%d frames for the existing port", len(fs))
	}
}

// ovs-vswitchd restarts: the OpenFlow session drops and the daemon must
// connect again for the next arrival; existing ports stay quiet.
func TestSwitchRestart(t *testing.T) {
	bin := requireE2E(t)
	h := newHost(t)
	h.addVif("vif1.0", 5, mac1, true)
	cap := startCapture(t, h.sw, "sw0")
	d := startDaemon(t, bin, h.ns, "--config", h.config(""), "--ovsdb", h.ovs.DBAddr())
	// A first arrival opens the OpenFlow session that the restart breaks.
	h.addVif("vif3.0", 0, net.HardwareAddr{0x52, 0x54, 0, 0x0e, 0, 3}, true)
	if fs := cap.waitFrom(net.HardwareAddr{0x52, 0x54, 0, 0x0e, 0, 3}, 1, 5*time.Second); len(fs) == 0 {
		t.Fatal("first arrival not announced")
	}

	h.ovs.RestartSwitch(t)
	time.Sleep(2 * time.Second)
	if fs := cap.from(mac1); len(fs) != 0 {
		t.Fatalf("%d frames re-announced an existing port after the ovs-vswitchd restart", len(fs))
	}
	h.addVif("vif2.0", 7, mac2, true)
	if fs := rarps(cap.waitFrom(mac2, 1, 5*time.Second)); len(fs) == 0 || fs[0].VLAN != 7 {
		t.Fatalf("a port added after the ovs-vswitchd restart was not announced on VLAN 7 (%d frames)", len(fs))
	}
	if d.count(msgIs("OpenFlow session ended, reconnecting")) == 0 {
		t.Error("daemon did not log the lost OpenFlow session")
	}
}

// `announce --vif` on an OVS port: the userspace datapath's port has no
// master in netlink, so the Linux-bridge path refuses it and OVSDB knows it.
func TestOneShotOnOVSPort(t *testing.T) {
	bin := requireE2E(t)
	h := newHost(t)
	ofport := h.addVif("vif1.0", 5, mac1, true)
	cap := startCapture(t, h.sw, "sw0")
	cfg := h.config("")

	out, err := h.ns.Run(bin, "--vif", "vif1.0", "--ovsdb", h.ovs.DBAddr(), "--config", cfg, "--dry-run")
	if err != nil {
		t.Fatalf("dry run: %v", err)
	}
	for _, want := range []string{"backend ovs", "bridge br0", "vlan 5", "guest " + mac1.String(), "ofport " + strconv.Itoa(ofport)} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run output lacks %q:\n%s", want, out)
		}
	}
	if fs := cap.from(mac1); len(fs) != 0 {
		t.Fatalf("dry run sent %d frames", len(fs))
	}

	if out, err := h.ns.Run(bin, "--vif", "vif1.0", "--ovsdb", h.ovs.DBAddr(), "--config", cfg, "--ip", "10.0.0.10"); err != nil {
		t.Fatalf("announce --vif: %v\n%s", err, out)
	}
	fs := cap.waitFrom(mac1, 10, 2*time.Second)
	if r := rarps(fs); len(r) != 5 {
		t.Errorf("%d RARPs, want 5", len(r))
	}
	if len(fs) != 10 {
		t.Errorf("%d frames from the guest, want 10 (5 rounds of RARP and GARP)", len(fs))
	}
	for _, f := range fs {
		if f.VLAN != 5 {
			t.Errorf("frame left with VLAN %d, want 5", f.VLAN)
		}
	}
	if out := h.fdb(); !fdbHas(out, ofport, 5, mac1) {
		t.Errorf("OVS FDB does not show %s on ofport %d VLAN 5:\n%s", mac1, ofport, out)
	}

	// A port neither Linux nor OVS knows keeps the Linux-bridge error.
	h.ns.MustRun(t, "ip", "link", "add", "vif9.0", "type", "veth", "peer", "name", "vif9p")
	out, err = h.ns.Run(bin, "--vif", "vif9.0", "--mac", mac2.String(), "--ovsdb", h.ovs.DBAddr(), "--config", cfg)
	if err == nil || !strings.Contains(out, "not a bridge port") {
		t.Errorf("unknown port: err %v, output %q; want the not-a-bridge-port error", err, out)
	}
}

// The lab's silent-VM migration with OVS hosts: the client pinging every
// 10 ms loses pings only in one outage at the move and gets them back, and
// the switch and host B's OVS forward the guest's MAC to its new place.
func TestSilentMigrationOVS(t *testing.T) {
	bin := requireE2E(t)
	l, err := lab.New(lab.Options{OVS: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	cfgBody := l.AgentConfig("guests:\n  - {port: \"vif*\", mac: " + lab.GuestMAC + ", ips: [" + lab.GuestIP + "]}\nmetrics: {listen: \"\"}\n")
	cfg := t.TempDir() + "/config.yaml"
	if err := os.WriteFile(cfg, []byte(cfgBody), 0o644); err != nil {
		t.Fatal(err)
	}
	startDaemon(t, bin, l.HostB, "--config", cfg)

	rep, err := l.Migrate(context.Background(), "daemon on OVS", lab.DefaultMigration())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%v", rep)
	for _, bad := range l.Healed(rep) {
		t.Error(bad)
	}
}
