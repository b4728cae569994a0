package linuxbr

import (
	"context"
	"errors"
	"net"
	"reflect"
	"sort"
	"strings"
	"testing"
)

const nudReachable = 0x02

// memFDB holds bridge forwarding databases with the kernel's semantics for
// the operations RepairFDB uses: br_fdb_get finds the one entry for
// (bridge, MAC, VLAN), and br_fdb_add with NLM_F_REPLACE re-points it and
// makes it dynamic.
type memFDB struct {
	fdb      []fdbEntry
	bridgeOf map[int]int // port ifindex -> bridge ifindex
}

func (m *memFDB) lookup(bridge int, mac net.HardwareAddr, vlan uint16) (fdbEntry, bool, error) {
	for _, e := range m.fdb {
		if e.Master == bridge && e.MAC.String() == mac.String() && e.VLAN == vlan {
			return e, true, nil
		}
	}
	return fdbEntry{}, false, nil
}

func (m *memFDB) move(port int, mac net.HardwareAddr, vlan uint16) error {
	br := m.bridgeOf[port]
	for i, e := range m.fdb {
		if e.Master == br && e.MAC.String() == mac.String() && e.VLAN == vlan {
			m.fdb[i].Port, m.fdb[i].State = port, nudReachable
			return nil
		}
	}
	m.fdb = append(m.fdb, fdbEntry{Port: port, Master: br, MAC: mac, VLAN: vlan, State: nudReachable})
	return nil
}

func (m *memFDB) port(index int) (string, int, bool, error) {
	br, ok := m.bridgeOf[index]
	if !ok {
		return "", 0, false, nil
	}
	if br == index {
		br = 0 // a bridge has no master
	}
	return memNames[index], br, true, nil
}

var memNames = map[int]string{1: "br0", 2: "up0", 3: "vif1.0", 4: "br1", 5: "up1", 6: "vif6.0", 8: "up8"}

func (m *memFDB) sorted() []fdbEntry {
	out := append([]fdbEntry(nil), m.fdb...)
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.MAC.String() != b.MAC.String() {
			return a.MAC.String() < b.MAC.String()
		}
		return a.VLAN < b.VLAN
	})
	return out
}

var (
	guestMAC = mac("52:54:00:12:34:56")
	otherMAC = mac("52:54:00:ab:cd:ef")
	brMAC    = mac("02:00:00:00:00:01")
)

// Bridge br0 (1) with uplink up0 (2), VM port vif1.0 (3) and another VM's
// port vif6.0 (6); bridge br1 (4) with uplink up1 (5); up8 (8) on no
// bridge, and nothing with ifindex 7.
func newMemFDB(entries ...fdbEntry) *memFDB {
	return &memFDB{
		fdb:      entries,
		bridgeOf: map[int]int{1: 1, 2: 1, 3: 1, 4: 4, 5: 4, 6: 1, 8: 0},
	}
}

func path0(filtering bool, vlan uint16) *Path {
	return &Path{
		Port: Link{Name: "vif1.0", Index: 3}, Bridge: Link{Name: "br0", Index: 1},
		VLANFiltering: filtering, VLAN: vlan,
		Uplinks: []Uplink{{Link: Link{Name: "up0", Index: 2}}},
	}
}

func TestRepairMovesLearnedEntry(t *testing.T) {
	m := newMemFDB(
		fdbEntry{Port: 2, Master: 1, MAC: guestMAC, State: nudReachable}, // learned behind the uplink
		fdbEntry{Port: 2, Master: 1, MAC: otherMAC, State: nudReachable},
		fdbEntry{Port: 5, Master: 4, MAC: guestMAC, State: nudReachable}, // another bridge
	)
	changed, err := repairFDB(context.Background(), m, path0(false, 0), guestMAC)
	if err != nil || !changed {
		t.Fatalf("changed=%v err=%v", changed, err)
	}
	want := []fdbEntry{
		{Port: 3, Master: 1, MAC: guestMAC, State: nudReachable},
		{Port: 5, Master: 4, MAC: guestMAC, State: nudReachable},
		{Port: 2, Master: 1, MAC: otherMAC, State: nudReachable},
	}
	if got := m.sorted(); !reflect.DeepEqual(got, want) {
		t.Fatalf("FDB now %+v\nwant %+v", got, want)
	}
	// A second repair finds nothing to do.
	if changed, err := repairFDB(context.Background(), m, path0(false, 0), guestMAC); err != nil || changed {
		t.Fatalf("second repair: changed=%v err=%v", changed, err)
	}
}

func TestRepairNothingLearned(t *testing.T) {
	m := newMemFDB(fdbEntry{Port: 2, Master: 1, MAC: otherMAC, State: nudReachable})
	changed, err := repairFDB(context.Background(), m, path0(false, 0), guestMAC)
	if err != nil || changed || len(m.fdb) != 1 {
		t.Fatalf("changed=%v err=%v fdb=%+v", changed, err, m.fdb)
	}
}

func TestRepairVLANFiltering(t *testing.T) {
	m := newMemFDB(
		fdbEntry{Port: 2, Master: 1, MAC: guestMAC, VLAN: 10, State: nudReachable},
		fdbEntry{Port: 2, Master: 1, MAC: guestMAC, VLAN: 20, State: nudReachable},
	)
	changed, err := repairFDB(context.Background(), m, path0(true, 10), guestMAC)
	if err != nil || !changed {
		t.Fatalf("changed=%v err=%v", changed, err)
	}
	want := []fdbEntry{
		{Port: 3, Master: 1, MAC: guestMAC, VLAN: 10, State: nudReachable},
		{Port: 2, Master: 1, MAC: guestMAC, VLAN: 20, State: nudReachable}, // another guest's VLAN: not ours
	}
	if got := m.sorted(); !reflect.DeepEqual(got, want) {
		t.Fatalf("FDB now %+v\nwant %+v", got, want)
	}
}

// A trunk VM port: the entry of every VLAN the guest sends on is repaired,
// and a pure trunk (no PVID, no untagged uplinks) has no untagged entry to
// repair.
func TestRepairTrunkPort(t *testing.T) {
	m := newMemFDB(
		fdbEntry{Port: 2, Master: 1, MAC: guestMAC, VLAN: 10, State: nudReachable},
		fdbEntry{Port: 2, Master: 1, MAC: guestMAC, VLAN: 20, State: nudReachable},
		fdbEntry{Port: 2, Master: 1, MAC: guestMAC, VLAN: 30, State: nudReachable},
	)
	p := path0(true, 0)
	p.Uplinks = nil
	p.Tagged = []TaggedVLAN{{VLAN: 10, Uplinks: []Uplink{{Link: Link{Name: "up0", Index: 2}, VLAN: 10}}}, {VLAN: 20}}
	changed, err := repairFDB(context.Background(), m, p, guestMAC)
	if err != nil || !changed {
		t.Fatalf("changed=%v err=%v", changed, err)
	}
	want := []fdbEntry{
		{Port: 3, Master: 1, MAC: guestMAC, VLAN: 10, State: nudReachable},
		{Port: 3, Master: 1, MAC: guestMAC, VLAN: 20, State: nudReachable},
		{Port: 2, Master: 1, MAC: guestMAC, VLAN: 30, State: nudReachable}, // not the port's VLAN
	}
	if got := m.sorted(); !reflect.DeepEqual(got, want) {
		t.Fatalf("FDB now %+v\nwant %+v", got, want)
	}
}

// Without VLAN filtering the bridge forwards by the entry on no VLAN; one
// left on a VLAN from when it filtered is never looked up, and stays.
func TestRepairWithoutFilteringUsesNoVLAN(t *testing.T) {
	m := newMemFDB(
		fdbEntry{Port: 2, Master: 1, MAC: guestMAC, State: nudReachable},
		fdbEntry{Port: 2, Master: 1, MAC: guestMAC, VLAN: 5, State: nudReachable},
	)
	if _, err := repairFDB(context.Background(), m, path0(false, 0), guestMAC); err != nil {
		t.Fatal(err)
	}
	want := []fdbEntry{
		{Port: 3, Master: 1, MAC: guestMAC, State: nudReachable},
		{Port: 2, Master: 1, MAC: guestMAC, VLAN: 5, State: nudReachable},
	}
	if got := m.sorted(); !reflect.DeepEqual(got, want) {
		t.Fatalf("FDB now %+v\nwant %+v", got, want)
	}
}

// An entry already on the VM port is left as it is, static or not.
func TestRepairEntryAlreadyOnPort(t *testing.T) {
	m := newMemFDB(fdbEntry{Port: 3, Master: 1, MAC: guestMAC, State: nudNoARP})
	changed, err := repairFDB(context.Background(), m, path0(false, 0), guestMAC)
	if err != nil || changed || m.fdb[0].State != nudNoARP {
		t.Fatalf("changed=%v err=%v fdb=%+v", changed, err, m.fdb)
	}
}

// Local entries are the host's: the bridge's own address, its ports' and
// any an operator pinned as permanent. Addresses of the host's other
// interfaces are refused before planning (resolve.DropHostOwned).
func TestRepairRefusesHostMAC(t *testing.T) {
	for name, tc := range map[string]struct {
		mac  net.HardwareAddr
		fdb  []fdbEntry
		path *Path
		msg  string
	}{
		"bridge's address": {brMAC, []fdbEntry{{Port: 1, Master: 1, MAC: brMAC, State: nudPermanent}}, path0(false, 0),
			`MAC 02:00:00:00:00:01 belongs to the host: it is a local entry of bridge "br0"`},
		"uplink's address": {otherMAC, []fdbEntry{{Port: 2, Master: 1, MAC: otherMAC, State: nudPermanent}}, path0(false, 0),
			`MAC 52:54:00:ab:cd:ef belongs to the host: it is a local entry of bridge "br0" on port "up0"`},
		"VM port's own address": {otherMAC, []fdbEntry{{Port: 3, Master: 1, MAC: otherMAC, State: nudPermanent}}, path0(false, 0),
			`MAC 52:54:00:ab:cd:ef belongs to the host: it is a local entry of bridge "br0" on port "vif1.0"`},
		"local entry on the guest's VLAN": {otherMAC, []fdbEntry{{Port: 2, Master: 1, MAC: otherMAC, VLAN: 10, State: nudPermanent}}, path0(true, 10),
			`MAC 52:54:00:ab:cd:ef belongs to the host: it is a local entry of bridge "br0" on port "up0"`},
	} {
		m := newMemFDB(tc.fdb...)
		before := m.sorted()
		changed, err := repairFDB(context.Background(), m, tc.path, tc.mac)
		if !errors.Is(err, ErrHostOwnedMAC) || err.Error() != tc.msg || changed {
			t.Errorf("%s: changed=%v err=%v, want %q", name, changed, err, tc.msg)
		}
		if got := m.sorted(); !reflect.DeepEqual(got, before) {
			t.Errorf("%s: FDB changed to %+v", name, got)
		}
	}
}

func TestRepairBadInput(t *testing.T) {
	for _, tc := range []struct {
		p   *Path
		mac net.HardwareAddr
		msg string
	}{
		{nil, guestMAC, "resolved path"},
		{&Path{Port: Link{Index: 3}}, guestMAC, "resolved path"},
		{path0(false, 0), mac("01:00:5e:00:00:01"), "MAC 01:00:5e:00:00:01: multicast address"},
		{path0(false, 0), mac("fe:ff:ff:ff:ff:ff"), "Xen's vif MAC"},
		{path0(false, 0), net.HardwareAddr{1, 2}, "not a 48-bit Ethernet address"},
	} {
		_, err := RepairFDB(context.Background(), tc.p, tc.mac)
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("RepairFDB(%v, %v) = %v, want %q", tc.p, tc.mac, err, tc.msg)
		}
	}
}

func TestRepairCancelled(t *testing.T) {
	m := newMemFDB(fdbEntry{Port: 2, Master: 1, MAC: guestMAC, State: nudReachable})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	changed, err := repairFDB(ctx, m, path0(false, 0), guestMAC)
	if !errors.Is(err, context.Canceled) || changed || m.fdb[0].Port != 2 {
		t.Fatalf("changed=%v err=%v fdb=%+v", changed, err, m.fdb)
	}
}

// Only an entry that can be stale moves: on an uplink (usable or not), or
// on a port that is gone or has left the bridge.
func TestRepairMovesOnlyStaleEntries(t *testing.T) {
	blocked := path0(false, 0)
	blocked.Uplinks = nil
	blocked.Unusable = []UnusableUplink{{Uplink: Uplink{Link: Link{Name: "up0", Index: 2}}, Why: "STP blocking"}}
	for name, tc := range map[string]struct {
		e    fdbEntry
		path *Path
	}{
		"uplink":          {fdbEntry{Port: 2, Master: 1, MAC: guestMAC, State: nudReachable}, path0(false, 0)},
		"blocked uplink":  {fdbEntry{Port: 2, Master: 1, MAC: guestMAC, State: nudReachable}, blocked},
		"port gone":       {fdbEntry{Port: 7, Master: 1, MAC: guestMAC, State: nudReachable}, path0(false, 0)},
		"port off bridge": {fdbEntry{Port: 8, Master: 1, MAC: guestMAC, State: nudReachable}, path0(false, 0)},
	} {
		m := newMemFDB(tc.e)
		changed, err := repairFDB(context.Background(), m, tc.path, guestMAC)
		if err != nil || !changed || m.fdb[0].Port != 3 {
			t.Errorf("%s: changed=%v err=%v fdb=%+v", name, changed, err, m.fdb)
		}
	}
}

// Entries someone owns are refused, touching nothing, with a typed error
// naming the reason the daemon counts.
func TestRepairRefusesOwnedEntries(t *testing.T) {
	for name, tc := range map[string]struct {
		e      fdbEntry
		reason RefusalReason
		msg    string
	}{
		"another VM's live port": {fdbEntry{Port: 6, Master: 1, MAC: guestMAC, State: nudReachable}, RefuseVMPort,
			`MAC 52:54:00:12:34:56: bridge "br0" has it on live port "vif6.0", not an uplink; not moving it to "vif1.0" (another guest uses that MAC)`},
		"static on the uplink": {fdbEntry{Port: 2, Master: 1, MAC: guestMAC, State: nudNoARP}, RefuseStatic,
			`MAC 52:54:00:12:34:56: bridge "br0" has a static entry for it on "up0"; not moving it to "vif1.0" (remove the entry to let selfannounce manage the MAC)`},
		"static on another VM": {fdbEntry{Port: 6, Master: 1, MAC: guestMAC, State: nudNoARP}, RefuseStatic,
			`MAC 52:54:00:12:34:56: bridge "br0" has a static entry for it on "vif6.0"; not moving it to "vif1.0" (remove the entry to let selfannounce manage the MAC)`},
		"sticky": {fdbEntry{Port: 2, Master: 1, MAC: guestMAC, State: nudReachable, Flags: ntfSticky}, RefuseStatic, ""},
		"extern_learn": {fdbEntry{Port: 2, Master: 1, MAC: guestMAC, State: nudReachable, Flags: ntfExtLearned}, RefuseExternal,
			`MAC 52:54:00:12:34:56: bridge "br0" has an externally learned entry for it on "up0" (a control plane owns it); not moving it to "vif1.0"`},
		"dynamic on the bridge itself": {fdbEntry{Port: 1, Master: 1, MAC: guestMAC, State: nudReachable}, RefuseLocal, ""},
	} {
		m := newMemFDB(tc.e)
		before := m.sorted()
		changed, err := repairFDB(context.Background(), m, path0(false, 0), guestMAC)
		var re *RefusedError
		if !errors.As(err, &re) || re.Reason != tc.reason || !errors.Is(err, ErrRefused) || changed {
			t.Errorf("%s: changed=%v err=%v, want a %s refusal", name, changed, err, tc.reason)
			continue
		}
		if tc.msg != "" && err.Error() != tc.msg {
			t.Errorf("%s: error %q\nwant %q", name, err, tc.msg)
		}
		if errors.Is(err, ErrHostOwnedMAC) != (tc.reason == RefuseLocal) {
			t.Errorf("%s: errors.Is(ErrHostOwnedMAC) = %v", name, !(tc.reason == RefuseLocal))
		}
		if got := m.sorted(); !reflect.DeepEqual(got, before) {
			t.Errorf("%s: FDB changed to %+v", name, got)
		}
	}
}

// The guest's own sibling port (an HVM guest's emulated NIC beside its
// netback vif) is the guest's: its entry moves.
func TestRepairMovesFromSiblingPort(t *testing.T) {
	memNames[6] = "vif1.0-emu"
	defer func() { memNames[6] = "vif6.0" }()
	m := newMemFDB(fdbEntry{Port: 6, Master: 1, MAC: guestMAC, State: nudReachable})
	changed, err := repairFDB(context.Background(), m, path0(false, 0), guestMAC)
	if err != nil || !changed || m.fdb[0].Port != 3 {
		t.Fatalf("changed=%v err=%v fdb=%+v", changed, err, m.fdb)
	}
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"vif3.0", "vif3.0-emu", true},
		{"tap3.0", "vif3.0", true},
		{"vif3.0", "vif3.1", false},
		{"vif3.0", "vif13.0", false},
		{"vnet3", "vnet3-emu", false},
		{"vif3.0", "vif3.0", false},
	} {
		if got := siblingPorts(tc.a, tc.b); got != tc.want {
			t.Errorf("siblingPorts(%q, %q) = %v", tc.a, tc.b, got)
		}
	}
}
