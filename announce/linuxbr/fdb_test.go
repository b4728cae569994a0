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
// the operations RepairFDB uses (br_fdb_add, br_fdb_delete): one entry per
// (bridge, MAC, VLAN), a replace re-points it and makes it dynamic.
type memFDB struct {
	hostLinks []Link
	fdb       []fdbEntry
	bridgeOf  map[int]int // port ifindex -> bridge ifindex
}

func (m *memFDB) entries(bridge int) ([]fdbEntry, error) {
	var out []fdbEntry
	for _, e := range m.fdb {
		if e.Master == bridge {
			out = append(out, e)
		}
	}
	return out, nil
}

func (m *memFDB) links() ([]Link, error) { return m.hostLinks, nil }

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

func (m *memFDB) remove(d fdbEntry) error {
	for i, e := range m.fdb {
		if e.Master == m.bridgeOf[d.Port] && e.Port == d.Port && e.MAC.String() == d.MAC.String() && e.VLAN == d.VLAN {
			m.fdb = append(m.fdb[:i], m.fdb[i+1:]...)
			return nil
		}
	}
	return errors.New("no such entry")
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
		hostLinks: []Link{
			{Name: "br0", Index: 1, MAC: brMAC},
			{Name: "up0", Index: 2, MAC: mac("02:00:00:00:00:02")},
			{Name: "vif1.0", Index: 3, MAC: mac("fe:ff:ff:ff:ff:ff")},
			{Name: "br1", Index: 4, MAC: mac("02:00:00:00:00:04")},
			{Name: "up1", Index: 5, MAC: mac("02:00:00:00:00:05")},
			{Name: "lo", Index: 9},
		},
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

func TestRepairLeftoverVLANWithoutFiltering(t *testing.T) {
	m := newMemFDB(
		fdbEntry{Port: 2, Master: 1, MAC: guestMAC, State: nudReachable},
		fdbEntry{Port: 2, Master: 1, MAC: guestMAC, VLAN: 5, State: nudReachable},
	)
	if _, err := repairFDB(context.Background(), m, path0(false, 0), guestMAC); err != nil {
		t.Fatal(err)
	}
	want := []fdbEntry{{Port: 3, Master: 1, MAC: guestMAC, State: nudReachable}}
	if got := m.sorted(); !reflect.DeepEqual(got, want) {
		t.Fatalf("FDB now %+v\nwant %+v", got, want)
	}
}

func TestRepairRefusesHostMAC(t *testing.T) {
	local := fdbEntry{Port: 2, Master: 1, MAC: otherMAC, VLAN: 7, State: nudPermanent}
	for name, tc := range map[string]struct {
		mac  net.HardwareAddr
		fdb  []fdbEntry
		path *Path
		msg  string
	}{
		"bridge's address": {brMAC, []fdbEntry{{Port: 1, Master: 1, MAC: brMAC, State: nudPermanent}}, path0(false, 0),
			`MAC 02:00:00:00:00:01 belongs to the host: it is the address of interface "br0"`},
		"other bridge's uplink": {mac("02:00:00:00:00:05"), nil, path0(false, 0),
			`MAC 02:00:00:00:00:05 belongs to the host: it is the address of interface "up1"`},
		// A local entry on any VLAN, even one the guest is not on.
		"local entry": {otherMAC, []fdbEntry{local, {Port: 2, Master: 1, MAC: otherMAC, VLAN: 10, State: nudReachable}}, path0(true, 10),
			`MAC 52:54:00:ab:cd:ef belongs to the host: it is a local entry of bridge "br0"`},
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
