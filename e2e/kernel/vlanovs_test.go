//go:build linux

package kernel_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/announce/sniff"
	"github.com/selfannounce/selfannounce/internal/lab"
	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/proctest"
	"github.com/selfannounce/selfannounce/internal/testbin"
	"github.com/selfannounce/selfannounce/internal/vm"
	"github.com/selfannounce/selfannounce/internal/wiretest"
)

// The one-shot's default schedule: five rounds.
const rounds = 5

var guestMAC, _ = net.ParseMAC(lab.GuestMAC)

// newLab builds the migration lab inside the kernel VM, which has the
// 802.1Q, vlan_filtering, bonding and openvswitch modules this host lacks.
func newLab(t *testing.T, o lab.Options) *lab.Lab {
	t.Helper()
	vm.RequireInside(t)
	for _, m := range []string{"8021q", "bridge", "openvswitch", "bonding"} {
		if out, err := exec.Command("modprobe", m).CombinedOutput(); err != nil {
			t.Fatalf("modprobe %s: %v: %s", m, err, out)
		}
	}
	l, err := lab.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l
}

// oneShot starts the real one-shot on host B for the destination vif, as
// a vif-hotplug or post-migrate hook would.
func oneShot(t *testing.T, l *lab.Lab, args ...string) *proctest.Proc {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfg, []byte(l.AgentConfig("")), 0o644); err != nil {
		t.Fatal(err)
	}
	base := []string{"--config", cfg, "--vif", lab.DstVif, "--mac", lab.GuestMAC, "--ip", lab.GuestIP, "--log-level", "debug"}
	if l.OVSB == nil {
		base = append(base, "--ovsdb", "off")
	}
	return proctest.Start(t, l.HostB, testbin.Announce(t), append(base, args...)...)
}

// migrate moves the silent VM to host B, runs the one-shot there once the
// guest resumed, and checks that the network followed: the client's pings
// come back, the switch has the guest MAC on host B's port on the VM
// network's VLAN, and host B's bridge has it on the vif.
func migrate(t *testing.T, l *lab.Lab, vlan int) (lab.Report, proctest.Result) {
	t.Helper()
	m := lab.DefaultMigration()
	// TCG: a slower beat, and time for the one-shot to start.
	m.Interval, m.After = 20*time.Millisecond, 5*time.Second
	var p *proctest.Proc
	m.OnResumed = func() error { p = oneShot(t, l); return nil }
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := l.Migrate(ctx, t.Name(), m)
	if err != nil {
		t.Fatal(err)
	}
	res := p.Wait(t, 30*time.Second)
	t.Logf("%s\none-shot (exit %d): %s", rep, res.Code, res.Output)
	if res.Code != 0 {
		t.Fatalf("one-shot exited %d: %s", res.Code, res.LastLine())
	}
	// Under TCG, ping falls behind its 20 ms beat and sends the last
	// pings in a burst it does not wait out, so the report's "ongoing" is
	// no verdict here: a fresh ping after the announcements is.
	if out, err := l.Client.Run("ping", "-n", "-c", "5", "-i", "0.2", "-W", "2", lab.GuestIP); err != nil {
		t.Errorf("the guest is unreachable after the announcements (missed %v): %v", rep.Missed, out)
	}
	// The check is that pings recovered (above), and where the tables point.
	for _, bad := range l.FDBFollowed() {
		t.Error(bad)
	}
	if port := switchPort(t, l, vlan); port == "" {
		t.Errorf("switch FDB: no entry for the guest MAC on VLAN %d", vlan)
	}
	return rep, res
}

// fdbRow is one line of `bridge -j fdb show`.
type fdbRow struct {
	MAC    string   `json:"mac"`
	Ifname string   `json:"ifname"`
	VLAN   int      `json:"vlan"`
	State  string   `json:"state"`
	Flags  []string `json:"flags"`
}

func fdbRows(t *testing.T, ns *netlab.NS, br string) []fdbRow {
	t.Helper()
	out := ns.MustRun(t, "bridge", "-j", "fdb", "show", "br", br)
	var rows []fdbRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("bridge -j fdb show br %s: %v: %s", br, err, out)
	}
	return rows
}

// bridgePort is the port of br's dynamic entry for the guest MAC on vlan
// (0: an entry without VLAN), "" when there is none.
func bridgePort(t *testing.T, ns *netlab.NS, br string, vlan int) string {
	t.Helper()
	for _, r := range fdbRows(t, ns, br) {
		if strings.EqualFold(r.MAC, lab.GuestMAC) && r.VLAN == vlan && r.State != "permanent" && r.Ifname != br {
			return r.Ifname
		}
	}
	return ""
}

// switchPort is the switch port of the guest MAC on vlan.
func switchPort(t *testing.T, l *lab.Lab, vlan int) string {
	t.Helper()
	return bridgePort(t, l.Switch, "sw", vlan)
}

// announcements are the captured frames from the guest MAC that decode as
// announcements.
func announcements(fs []wiretest.Frame) []sniff.Announcement {
	var out []sniff.Announcement
	for _, f := range fs {
		if a, ok := f.Announcement(); ok {
			out = append(out, a)
		}
	}
	return out
}

// checkTaggedOnce fails unless every frame carries exactly one 802.1Q tag,
// of VLAN want: no untagged copy, no double tag.
func checkTaggedOnce(t *testing.T, where string, fs []wiretest.Frame, want int) {
	t.Helper()
	for i, f := range fs {
		inner := binary.BigEndian.Uint16(f.Untagged()[12:])
		switch {
		case f.VLAN != want:
			t.Errorf("%s: frame %d (ethertype %#04x) left with VLAN %d, want %d: % x", where, i, f.EtherType(), f.VLAN, want, head(f.Data))
		case inner == 0x8100 || inner == 0x88a8:
			t.Errorf("%s: frame %d left tagged twice (inner ethertype %#04x): % x", where, i, inner, head(f.Data))
		}
	}
}

func head(b []byte) []byte { return b[:min(len(b), 22)] }

// kinds counts announcements per kind (sniff's names) and VLAN.
func kinds(as []sniff.Announcement) map[string]int {
	n := map[string]int{}
	for _, a := range as {
		n[fmt.Sprintf("%s/%d", a.Kind, a.VLAN)]++
	}
	return n
}
