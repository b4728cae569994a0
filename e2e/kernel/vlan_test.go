//go:build linux

package kernel_test

import (
	"github.com/selfannounce/selfannounce/announce/sniff"
	"strings"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/internal/lab"
	"github.com/selfannounce/selfannounce/internal/wiretest"
)

// XenServer's Linux-bridge VLAN network: bridge xapi1 bridges the 802.1Q
// device bond0.100 (or up0.100 on a plain uplink) and the vifs, and filters
// nothing. The one-shot writes on the VLAN device, which tags; every frame
// must leave one physical member with exactly one tag 100, each
// announcement once per round, and nothing on the other member.
func TestInVMVlanXapiBridge(t *testing.T) {
	for _, tc := range []struct {
		name, bond, uplink string
	}{
		{"bond0.100", "active-backup", "bond0.100"},
		{"up0.100", "", "up0.100"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t, lab.Options{VLAN: 100, Layout: lab.VLANDevice, Bond: tc.bond})
			if br := l.HostB.MustRun(t, "cat", "/sys/class/net/"+tc.uplink+"/master/uevent"); !strings.Contains(br, "INTERFACE="+lab.VLANBridge) {
				t.Fatalf("%s is not in %s: %s", tc.uplink, lab.VLANBridge, br)
			}
			c0 := wiretest.Start(t, l.HostB, "up0", wiretest.Out)
			var c1 *wiretest.Capture
			if tc.bond != "" {
				c1 = wiretest.Start(t, l.HostB, "up1", wiretest.Out)
			}
			migrate(t, l, 100)
			guest := filter(c0.Stop(t), wiretest.From(guestMAC))
			checkTaggedOnce(t, "host B up0", guest, 100)
			checkRounds(t, announcements(guest), map[string]int{"rarp/100": rounds, "garp-request/100": rounds})
			if c1 != nil {
				// active-backup with primary up0: the backup member sends nothing.
				if other := filter(c1.Stop(t), wiretest.From(guestMAC)); len(other) != 0 {
					t.Errorf("%d frames from the guest MAC left on the backup member up1 too: %v", len(other), kinds(announcements(other)))
				}
			}
			if p := bridgePort(t, l.HostB, lab.VLANBridge, 0); p != lab.DstVif {
				t.Errorf("host B %s FDB: guest MAC on %q, want %s", lab.VLANBridge, p, lab.DstVif)
			}
		})
	}
}

// A vlan_filtering bridge: the vif has PVID 100 untagged, the uplink up0
// carries 100 tagged. The sender writes on up0 itself and must add the tag.
func TestInVMVlanFiltering(t *testing.T) {
	l := newLab(t, lab.Options{VLAN: 100, Layout: lab.VLANFiltering})
	c := wiretest.Start(t, l.HostB, "up0", wiretest.Out)
	migrate(t, l, 100)
	fs := c.Stop(t)
	guest := filter(fs, wiretest.From(guestMAC))
	checkTaggedOnce(t, "host B up0", guest, 100)
	checkRounds(t, announcements(guest), map[string]int{"rarp/100": rounds, "garp-request/100": rounds})
	if p := bridgePort(t, l.HostB, lab.Bridge, 100); p != lab.DstVif {
		t.Errorf("host B %s FDB on VLAN 100: guest MAC on %q, want %s", lab.Bridge, p, lab.DstVif)
	}
}

func filter(fs []wiretest.Frame, pred func(wiretest.Frame) bool) []wiretest.Frame {
	var out []wiretest.Frame
	for _, f := range fs {
		if pred(f) {
			out = append(out, f)
		}
	}
	return out
}

// checkRounds compares the announcements per kind/VLAN with want exactly:
// one more is a duplicate (a frame sent twice, or flooded back), one fewer a
// loss.
func checkRounds(t *testing.T, as []sniff.Announcement, want map[string]int) {
	t.Helper()
	got := kinds(as)
	for k, n := range want {
		if got[k] != n {
			t.Errorf("announcements %s: %d, want %d (all: %v)", k, got[k], n, got)
		}
	}
	for k, n := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected announcements %s: %d (all: %v)", k, n, got)
		}
	}
}

// A vif that is a trunk: VLANs 100 and 200 tagged, no PVID, the guest
// tagging on its VLAN subinterfaces, which share its MAC. The guest's MAC is
// announced on each VLAN, tagged as the uplink needs (RARP: the MAC alone),
// and no GARP anywhere: the host cannot tell which VLAN an address lives
// on, and a GARP on the wrong one would claim it where it is not the
// guest's. Host B's bridge entry for VLAN 100, learned behind up0 while the
// VM lived on host A, is moved to the vif before the first frame.
func TestInVMVlanTrunkVif(t *testing.T) {
	l := newLab(t, lab.Options{VLAN: 100, Layout: lab.VLANFiltering, TrunkVLANs: []uint16{200}, TrunkVif: true})
	if err := l.PlugDestination(); err != nil {
		t.Fatal(err)
	}
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
	checkRounds(t, announcements(guest), map[string]int{"rarp/100": rounds, "rarp/200": rounds})
	for _, f := range guest {
		if f.VLAN < 0 {
			t.Errorf("untagged frame left the trunk uplink: % x", head(f.Data))
		}
	}
	if p := bridgePort(t, l.HostB, lab.Bridge, 100); p != lab.DstVif {
		t.Errorf("host B %s FDB on VLAN 100: guest MAC on %q, want %s", lab.Bridge, p, lab.DstVif)
	}
	for _, v := range []int{100, 200} {
		if p := switchPort(t, l, v); p != "pB" {
			t.Errorf("switch FDB on VLAN %d: guest MAC on %q, want pB", v, p)
		}
	}
}
