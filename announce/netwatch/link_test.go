package netwatch

import (
	"encoding/binary"
	"net"
	"testing"

	"github.com/mdlayher/netlink"
)

// msg builds a link message payload the way the kernel lays it out.
type msg struct {
	family     uint8
	index      int32
	flags      uint32
	name       string
	mac        net.HardwareAddr
	kind       string
	master     uint32
	oper       uint8
	protinfo   int // AF_BRIDGE IFLA_PROTINFO state, -1 for none
	slaveState int // IFLA_INFO_SLAVE_DATA state, -1 for none
	slaveKind  string
	noOper     bool
}

func (m msg) bytes(t testing.TB) []byte {
	t.Helper()
	b := make([]byte, sizeofIfinfomsg)
	b[0] = m.family
	binary.NativeEndian.PutUint32(b[4:8], uint32(m.index))
	binary.NativeEndian.PutUint32(b[8:12], m.flags)
	ae := netlink.NewAttributeEncoder()
	if m.name != "" {
		ae.String(iflaIfname, m.name)
	}
	if m.mac != nil {
		ae.Bytes(iflaAddress, m.mac)
	}
	if m.master != 0 {
		ae.Uint32(iflaMaster, m.master)
	}
	if !m.noOper {
		ae.Uint8(iflaOperstate, m.oper)
	}
	ae.Uint32(4, 1500) // IFLA_MTU: unrelated attributes must be skipped
	if m.kind != "" || m.slaveKind != "" {
		ae.Nested(iflaLinkinfo, func(nae *netlink.AttributeEncoder) error {
			if m.kind != "" {
				nae.String(iflaInfoKind, m.kind)
			}
			if m.slaveKind != "" {
				nae.String(iflaInfoSlaveKind, m.slaveKind)
			}
			if m.slaveState >= 0 {
				nae.Nested(iflaInfoSlaveData, func(sae *netlink.AttributeEncoder) error {
					sae.Uint8(iflaBrportState, uint8(m.slaveState))
					sae.Uint16(2, 32) // IFLA_BRPORT_PRIORITY
					return nil
				})
			}
			return nil
		})
	}
	if m.protinfo >= 0 {
		ae.Nested(iflaProtinfo, func(nae *netlink.AttributeEncoder) error {
			nae.Uint8(iflaBrportState, uint8(m.protinfo))
			return nil
		})
	}
	a, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return append(b, a...)
}

var guestMAC = net.HardwareAddr{0xfe, 0x54, 0x00, 0x12, 0x34, 0x56}

func vifMsg() msg {
	return msg{index: 7, name: "vnet0", mac: guestMAC, kind: "tun", oper: 2, protinfo: -1, slaveState: -1}
}

func feed(t *testing.T, tb table, typ uint16, m msg) (Event, bool) {
	t.Helper()
	var lm linkMsg
	if err := lm.decode(typ, m.bytes(t)); err != nil {
		t.Fatal(err)
	}
	return tb.apply(&lm)
}

func TestApplyPortJourney(t *testing.T) {
	tb := table{}
	m := vifMsg()
	ev, ok := feed(t, tb, rtmNewLink, m)
	want := Link{Index: 7, Name: "vnet0", MAC: guestMAC, Kind: "tun", STP: STPUnknown}
	if !ok || ev.Deleted || !ev.Link.sameView(want) || ev.Link.Kind != "tun" {
		t.Fatalf("new link: got %v %v, want %v", ev, ok, want)
	}

	// The same message again (the kernel repeats itself) changes nothing.
	if ev, ok := feed(t, tb, rtmNewLink, m); ok {
		t.Errorf("repeated message produced %v", ev)
	}

	// Carrier via operstate UNKNOWN + IFF_LOWER_UP.
	m.flags, m.oper = iffUp|iffLowerUp, ifOperUnknown
	ev, ok = feed(t, tb, rtmNewLink, m)
	if !ok || !ev.Link.AdminUp || !ev.Link.OperUp {
		t.Fatalf("lower up: got %v %v", ev, ok)
	}

	// Joining a bridge: AF_UNSPEC with master and slave data.
	m.master, m.slaveKind, m.slaveState, m.oper = 3, "bridge", int(STPBlocking), ifOperUp
	ev, ok = feed(t, tb, rtmNewLink, m)
	if !ok || ev.Link.Master != 3 || ev.Link.STP != STPBlocking {
		t.Fatalf("join: got %v %v", ev, ok)
	}

	// AF_BRIDGE reports STP progress; the kind is not in these messages and
	// must survive.
	for _, s := range []STPState{STPListening, STPLearning, STPForwarding} {
		b := msg{family: afBridge, index: 7, flags: m.flags, name: "vnet0", master: 3, oper: ifOperUp, protinfo: int(s), slaveState: -1}
		ev, ok = feed(t, tb, rtmNewLink, b)
		if !ok || ev.Link.STP != s || ev.Link.Kind != "tun" || ev.Link.Master != 3 {
			t.Fatalf("stp %v: got %v %v", s, ev, ok)
		}
	}

	// AF_BRIDGE RTM_DELLINK: left the bridge, not deleted.
	ev, ok = feed(t, tb, rtmDelLink, msg{family: afBridge, index: 7, name: "vnet0", master: 3, protinfo: -1, slaveState: -1})
	if !ok || ev.Deleted || ev.Link.Master != 0 || ev.Link.STP != STPUnknown {
		t.Fatalf("bridge dellink: got %v %v", ev, ok)
	}
	if _, ok := tb[7]; !ok {
		t.Fatal("bridge dellink removed the link")
	}

	// AF_UNSPEC RTM_DELLINK: gone.
	ev, ok = feed(t, tb, rtmDelLink, vifMsg())
	if !ok || !ev.Deleted || ev.Link.Name != "vnet0" {
		t.Fatalf("dellink: got %v %v", ev, ok)
	}
	if len(tb) != 0 {
		t.Fatalf("table not empty: %v", tb)
	}
	// Deleting an unknown link says nothing.
	if ev, ok := feed(t, tb, rtmDelLink, vifMsg()); ok {
		t.Errorf("unknown deletion produced %v", ev)
	}
}

func TestApplyBridgeSelfIsNotItsOwnMaster(t *testing.T) {
	tb := table{}
	feed(t, tb, rtmNewLink, msg{index: 3, name: "br0", kind: "bridge", oper: ifOperUp, flags: iffUp, protinfo: -1, slaveState: -1})
	ev, _ := feed(t, tb, rtmNewLink, msg{family: afBridge, index: 3, name: "br0", master: 3, oper: ifOperUp, flags: iffUp, protinfo: -1, slaveState: -1})
	if ev.Link.Master != 0 {
		t.Errorf("bridge became its own master: %v", ev.Link)
	}
}

func TestApplyNonBridgeSlaveHasNoSTP(t *testing.T) {
	tb := table{}
	ev, _ := feed(t, tb, rtmNewLink, msg{index: 9, name: "vif1.0", master: 2, slaveKind: "openvswitch", slaveState: 1, oper: ifOperUp, protinfo: -1})
	if ev.Link.STP != STPUnknown || ev.Link.Master != 2 {
		t.Errorf("ovs port = %v", ev.Link)
	}
}

func TestApplyUnrelatedChangeIsSilent(t *testing.T) {
	tb := table{}
	m := vifMsg()
	feed(t, tb, rtmNewLink, m)
	m.kind = "tun" // same; and an MTU-only change looks like this
	if ev, ok := feed(t, tb, rtmNewLink, m); ok {
		t.Errorf("unrelated change produced %v", ev)
	}
}

func TestDecodeAllocations(t *testing.T) {
	tb := table{}
	b := vifMsg().bytes(t)
	var lm linkMsg
	allocs := testing.AllocsPerRun(100, func() {
		if err := lm.decode(rtmNewLink, b); err != nil {
			t.Fatal(err)
		}
		tb.apply(&lm)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per unchanged message", allocs)
	}
}

func TestDecodeRejectsShortMessage(t *testing.T) {
	var lm linkMsg
	if err := lm.decode(rtmNewLink, make([]byte, 8)); err == nil {
		t.Error("short message accepted")
	}
}

func TestDecodeRejectsMalformedAttribute(t *testing.T) {
	b := vifMsg().bytes(t)
	// Claim the first attribute runs past the end of the message.
	binary.NativeEndian.PutUint16(b[sizeofIfinfomsg:], 0xfff0)
	var lm linkMsg
	if err := lm.decode(rtmNewLink, b); err == nil {
		t.Error("attribute overrunning the message accepted")
	}
	if err := lm.decode(rtmNewLink, append(vifMsg().bytes(t), 1, 2)); err == nil {
		t.Error("trailing partial attribute header accepted")
	}
}

func TestDiff(t *testing.T) {
	a := Link{Index: 1, Name: "a", STP: STPUnknown}
	b := Link{Index: 2, Name: "b", STP: STPUnknown}
	b2 := b
	b2.OperUp = true
	c := Link{Index: 3, Name: "c", STP: STPUnknown}
	evs := diff(table{1: a, 2: b}, table{2: b2, 3: c})
	want := []Event{{Link: a, Deleted: true}, {Link: b2}, {Link: c}}
	if len(evs) != len(want) {
		t.Fatalf("diff = %v, want %v", evs, want)
	}
	for i := range want {
		if evs[i].Deleted != want[i].Deleted || !evs[i].Link.sameView(want[i].Link) {
			t.Errorf("diff[%d] = %v, want %v", i, evs[i], want[i])
		}
	}
	if evs := diff(table{1: a}, table{1: a}); len(evs) != 0 {
		t.Errorf("diff of equal tables = %v", evs)
	}
}

func TestSTPStateString(t *testing.T) {
	for s, want := range map[STPState]string{STPForwarding: "forwarding", STPUnknown: "unknown", 9: "STPState(9)"} {
		if s.String() != want {
			t.Errorf("%d.String() = %q, want %q", s, s.String(), want)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(vifMsg().bytes(f))
	f.Add(msg{family: afBridge, index: 3, name: "br0", master: 3, protinfo: 3, slaveState: -1}.bytes(f))
	f.Fuzz(func(t *testing.T, b []byte) {
		var lm linkMsg
		if lm.decode(rtmNewLink, b) == nil {
			table{}.apply(&lm)
		}
	})
}
