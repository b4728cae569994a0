//go:build linux

package kernel_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/internal/lab"
	"github.com/selfannounce/selfannounce/internal/ovstest"
	"github.com/selfannounce/selfannounce/internal/wiretest"
)

// ovsFDB returns the interface and VLAN of every entry of OVS's MAC table
// for the guest MAC, from `ovs-appctl fdb/show`.
func ovsFDB(t *testing.T, o *ovstest.OVS) map[int]string {
	t.Helper()
	got := map[int]string{}
	for _, line := range strings.Split(o.Appctl(t, "fdb/show", lab.Bridge), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || !strings.EqualFold(f[2], lab.GuestMAC) {
			continue
		}
		vlan, _ := strconv.Atoi(f[1])
		name := f[0]
		if _, err := strconv.Atoi(f[0]); err == nil {
			name = o.Vsctl(t, "--bare", "--columns=name", "find", "Interface", "ofport="+f[0])
		}
		got[vlan] = name
	}
	return got
}

// The packet-out path on the kernel datapath: the vif is an access port of
// VLAN 100, the uplink a trunk. OVS must tag the untagged packet-out once,
// and learn the MAC on the vif.
func TestInVMOVSAccessPort(t *testing.T) {
	l := newLab(t, lab.Options{OVS: true, OVSKernel: true, VLAN: 100})
	if dp := l.OVSB.Vsctl(t, "get", "Bridge", lab.Bridge, "datapath_type"); dp != "system" {
		t.Fatalf("datapath_type %q, want system", dp)
	}
	c := wiretest.Start(t, l.HostB, "up0", wiretest.Out)
	migrate(t, l, 100)
	guest := filter(c.Stop(t), wiretest.From(guestMAC))
	checkTaggedOnce(t, "host B up0", guest, 100)
	checkRounds(t, announcements(guest), map[string]int{"rarp/100": rounds, "garp-request/100": rounds})
	if got := ovsFDB(t, l.OVSB); got[100] != lab.DstVif {
		t.Errorf("OVS fdb/show: guest MAC %v, want on %s in VLAN 100", got, lab.DstVif)
	}
	// The kernel datapath carried it: the module's datapath holds the ports.
	if dp := l.OVSB.Appctl(t, "dpctl/show"); !strings.Contains(dp, "system@ovs-system") || !strings.Contains(dp, lab.DstVif) {
		t.Errorf("dpctl/show: no kernel datapath with %s:\n%s", lab.DstVif, dp)
	}
}

// XenServer's default bond mode: balance-slb, members up0 and up1 facing two
// independent switch ports. Each announcement leaves on one member, tagged
// once, and the switch learns the guest behind that member's port.
func TestInVMOVSBondSLB(t *testing.T) {
	l := newLab(t, lab.Options{OVS: true, OVSKernel: true, VLAN: 100, OVSBond: "balance-slb"})
	if mode := l.OVSB.Vsctl(t, "get", "Port", "bond0", "bond_mode"); mode != "balance-slb" {
		t.Fatalf("bond_mode %q", mode)
	}
	// OVS logs every MAC it learns at debug level: the story of where the
	// guest MAC went, for a failure.
	l.OVSB.Appctl(t, "vlog/set", "ofproto_dpif_xlate:file:dbg")
	t.Cleanup(func() {
		if t.Failed() {
			logLearned(t, l.OVSB)
		}
	})
	c0 := wiretest.Start(t, l.HostB, "up0", wiretest.Both)
	c1 := wiretest.Start(t, l.HostB, "up1", wiretest.Both)
	migrate(t, l, 100)
	if t.Failed() {
		for _, c := range []*wiretest.Capture{c0, c1} {
			for _, f := range filter(c.Frames(nil), wiretest.From(guestMAC)) {
				t.Logf("%s %s out=%v vlan %d type %#04x", c.Name(), f.At.Format("15:04:05.000000"), f.Outgoing, f.VLAN, f.EtherType())
			}
		}
	}
	out := func(f wiretest.Frame) bool { return f.Outgoing && wiretest.From(guestMAC)(f) }
	g0 := announcements(filter(c0.Stop(t), out))
	g1 := announcements(filter(c1.Stop(t), out))
	t.Logf("bond/show:\n%s", l.OVSB.Appctl(t, "bond/show", "bond0"))
	member, on, other := "up0", g0, g1
	if len(g1) > len(g0) {
		member, on, other = "up1", g1, g0
	}
	if len(other) != 0 {
		t.Errorf("announcements left on both members: %v and %v", kinds(g0), kinds(g1))
	}
	checkRounds(t, on, map[string]int{"rarp/100": rounds, "garp-request/100": rounds})
	want := map[string]string{"up0": "pB", "up1": "pB2"}[member]
	if p := switchPort(t, l, 100); p != want {
		t.Errorf("switch FDB on VLAN 100: guest MAC on %q, want %s (behind %s, where the announcements left)", p, want, member)
	}
	if got := ovsFDB(t, l.OVSB); got[100] != lab.DstVif {
		t.Errorf("OVS fdb/show: guest MAC %v, want on %s in VLAN 100", got, lab.DstVif)
	}
}

// A trunk vif (vlan_mode=trunk, trunks=100,200): its native VLAN, the
// untagged one, is not in trunks, so OVS drops an untagged packet-out from
// it without a word. The guest's MAC lives on the trunk's VLANs: it is
// announced there, RARP (the MAC alone) on each, tagged by the sender, and
// OVS learns it on the vif in each VLAN. No GARP: the host cannot tell
// which VLAN an address belongs to.
func TestInVMOVSTrunkNoNative(t *testing.T) {
	for _, tc := range []struct {
		name string
		port []string // ovs-vsctl set Port vif2.0 ...
		want map[string]int
	}{
		{"trunk", []string{"trunks=100,200", "vlan_mode=trunk"},
			map[string]int{"rarp/100": rounds, "rarp/200": rounds}},
		{"native-untagged", []string{"tag=100", "trunks=200", "vlan_mode=native-untagged"},
			map[string]int{"rarp/100": rounds, "garp-request/100": rounds, "rarp/200": rounds}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t, lab.Options{OVS: true, OVSKernel: true, VLAN: 100, TrunkVLANs: []uint16{200}})
			if err := l.PlugDestination(); err != nil {
				t.Fatal(err)
			}
			l.OVSB.Vsctl(t, append([]string{"clear", "Port", lab.DstVif, "tag", "--", "set", "Port", lab.DstVif}, tc.port...)...)
			if err := l.Resume(); err != nil {
				t.Fatal(err)
			}
			c := wiretest.Start(t, l.HostB, "up0", wiretest.Out)
			res := oneShot(t, l).Wait(t, 30*time.Second)
			t.Logf("one-shot (exit %d): %s", res.Code, res.Output)
			if res.Code != 0 {
				t.Fatalf("one-shot exited %d: %s", res.Code, res.LastLine())
			}
			guest := filter(c.Stop(t), wiretest.From(guestMAC))
			as := announcements(guest)
			checkRounds(t, as, tc.want)
			for _, f := range guest {
				if f.VLAN < 0 {
					t.Errorf("untagged frame left the trunk: % x", head(f.Data))
				}
			}
			got := ovsFDB(t, l.OVSB)
			for _, v := range []int{100, 200} {
				if got[v] != lab.DstVif {
					t.Errorf("OVS fdb/show: guest MAC %v, want on %s in VLAN %d", got, lab.DstVif, v)
				}
				if p := switchPort(t, l, v); p != "pB" {
					t.Errorf("switch FDB on VLAN %d: guest MAC on %q, want pB", v, p)
				}
			}
		})
	}
}

// logLearned logs what ovs-vswitchd said it learned about the guest MAC.
func logLearned(t *testing.T, o *ovstest.OVS) {
	b, err := os.ReadFile(filepath.Join(o.Dir(), "ovs-vswitchd.log"))
	if err != nil {
		t.Log(err)
		return
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, lab.GuestMAC) || strings.Contains(line, "bond") {
			t.Log(line)
		}
	}
}
