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

const nudReachable, nudNoARP = 0x02, 0x40

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

// Bridge br0 (1) with uplink up0 (2) and VM port vif1.0 (3); bridge br1 (4)
// with uplink up1 (5).
func newMemFDB(entries ...fdbEntry) *memFDB {
	return &memFDB{
		fdb:      entries,
		bridgeOf: map[int]int{1: 1, 2: 1, 3: 1, 4: 4, 5: 4},
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
		fdbEntry{Port: 2, Master: 1, MAC: guestMAC, State: nudNoARP}, // static, behind the uplink
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
