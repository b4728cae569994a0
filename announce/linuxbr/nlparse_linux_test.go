//go:build linux

package linuxbr

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

// nla builds one netlink attribute as the kernel's nla_put does: a 4-byte
// header {u16 len, u16 type} in host order, the payload, padding to 4.
func nla(typ uint16, payload ...[]byte) []byte {
	p := bytes.Join(payload, nil)
	b := make([]byte, 4, 4+len(p)+3)
	binary.NativeEndian.PutUint16(b[0:2], uint16(4+len(p)))
	binary.NativeEndian.PutUint16(b[2:4], typ)
	b = append(b, p...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func u16(v uint16) []byte { return binary.NativeEndian.AppendUint16(nil, v) }
func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

// vinfo is struct bridge_vlan_info {__u16 flags; __u16 vid;}.
func vinfo(flags, vid uint16) []byte { return nla(iflaBridgeVLANInfo, u16(flags), u16(vid)) }

// brlink builds an RTM_NEWLINK payload as br_fill_ifinfo sends it for a
// port in an AF_BRIDGE dump with RTEXT_FILTER_BRVLAN.
func brlink(index int32, name string, afSpecType uint16, vlans ...[]byte) []byte {
	ifi := make([]byte, 16) // struct ifinfomsg
	ifi[0] = unix.AF_BRIDGE
	binary.NativeEndian.PutUint16(ifi[2:4], unix.ARPHRD_ETHER)
	binary.NativeEndian.PutUint32(ifi[4:8], uint32(index))
	binary.NativeEndian.PutUint32(ifi[8:12], unix.IFF_UP|unix.IFF_BROADCAST)
	return bytes.Join([][]byte{
		ifi,
		nla(unix.IFLA_IFNAME, []byte(name+"\x00")),
		nla(unix.IFLA_MASTER, u32(1)),
		nla(unix.IFLA_MTU, u32(1500)),
		nla(unix.IFLA_OPERSTATE, []byte{6}),
		nla(unix.IFLA_ADDRESS, []byte{2, 0, 0, 0, 0, 7}),
		nla(unix.IFLA_PROTINFO|unix.NLA_F_NESTED, nla(1 /* IFLA_BRPORT_STATE */, []byte{3})),
		nla(afSpecType, vlans...),
	}, nil)
}

func TestParseBridgeVLANs(t *testing.T) {
	const pvidUntagged = bridgeVLANInfoPVID | bridgeVLANInfoUntagged
	for _, afSpec := range []uint16{unix.IFLA_AF_SPEC, unix.IFLA_AF_SPEC | unix.NLA_F_NESTED} {
		msg := brlink(7, "bond0", afSpec,
			vinfo(pvidUntagged, 1),
			vinfo(0, 10),
			vinfo(bridgeVLANInfoUntagged, 20),
			vinfo(bridgeVLANInfoRangeBegin, 100),
			vinfo(bridgeVLANInfoRangeEnd, 102),
		)
		idx, vlans, err := parseBridgeVLANs(msg)
		if err != nil {
			t.Fatal(err)
		}
		want := []VLAN{
			{ID: 1, PVID: true, Untagged: true},
			{ID: 10},
			{ID: 20, Untagged: true},
			{ID: 100}, {ID: 101}, {ID: 102},
		}
		if idx != 7 || !reflect.DeepEqual(vlans, want) {
			t.Errorf("AF_SPEC type %#x: got %d %+v, want 7 %+v", afSpec, idx, vlans, want)
		}
	}
}

func TestParseBridgeVLANsNoTable(t *testing.T) {
	// A bridge without VLAN filtering sends IFLA_AF_SPEC empty or not at all.
	idx, vlans, err := parseBridgeVLANs(brlink(3, "up0", unix.IFLA_AF_SPEC))
	if err != nil || idx != 3 || len(vlans) != 0 {
		t.Fatalf("got %d %v %v", idx, vlans, err)
	}
}

func TestParseBridgeVLANsMalformed(t *testing.T) {
	for name, msg := range map[string][]byte{
		"short ifinfomsg": make([]byte, 10),
		"short vlan info": brlink(3, "up0", unix.IFLA_AF_SPEC, nla(iflaBridgeVLANInfo, u16(0))),
		"vid 0":           brlink(3, "up0", unix.IFLA_AF_SPEC, vinfo(0, 0)),
		"vid 4095":        brlink(3, "up0", unix.IFLA_AF_SPEC, vinfo(0, 4095)),
		"open range":      brlink(3, "up0", unix.IFLA_AF_SPEC, vinfo(bridgeVLANInfoRangeBegin, 5)),
		"range end only":  brlink(3, "up0", unix.IFLA_AF_SPEC, vinfo(bridgeVLANInfoRangeEnd, 5)),
	} {
		if _, _, err := parseBridgeVLANs(msg); err == nil {
			t.Errorf("%s: parsed without error", name)
		}
	}
	full := brlink(3, "up0", unix.IFLA_AF_SPEC, vinfo(0, 5))
	if _, _, err := parseBridgeVLANs(full[:len(full)-2]); err == nil {
		t.Error("truncated attribute: parsed without error")
	}
}

// The FDB request must carry the layout RTM_NEWNEIGH/RTM_DELNEIGH expect,
// and the dump parser must read it back.
func TestFDBRequestLayout(t *testing.T) {
	m := mac("52:54:00:12:34:56")
	b, err := fdbRequest(9, m, 10, unix.NUD_REACHABLE)
	if err != nil {
		t.Fatal(err)
	}
	ndm := []byte{unix.AF_BRIDGE, 0, 0, 0}
	ndm = append(ndm, u32(9)...)
	ndm = append(ndm, u16(unix.NUD_REACHABLE)...)
	ndm = append(ndm, unix.NTF_MASTER, 0)
	want := bytes.Join([][]byte{ndm, nla(unix.NDA_LLADDR, m), nla(unix.NDA_VLAN, u16(10))}, nil)
	if !bytes.Equal(b, want) {
		t.Fatalf("request\n%x\nwant\n%x", b, want)
	}
	e, err := parseFDB(append(b, nla(unix.NDA_MASTER, u32(4))...))
	if err != nil {
		t.Fatal(err)
	}
	if e.Port != 9 || e.Master != 4 || e.VLAN != 10 || e.MAC.String() != m.String() || e.State != unix.NUD_REACHABLE || e.Flags != unix.NTF_MASTER {
		t.Fatalf("parsed %+v", e)
	}
	b, _ = fdbRequest(9, m, 0, 0)
	if len(b) != unix.SizeofNdMsg+len(nla(unix.NDA_LLADDR, m)) {
		t.Fatalf("vlan 0 must send no NDA_VLAN: %x", b)
	}
}

// The FDB get must pass rtnl_fdb_get's strict checks: only the family and
// NTF_MASTER set in the ndmsg, the bridge as NDA_MASTER, NDA_VLAN only when
// looking up a VLAN.
func TestFDBGetRequestLayout(t *testing.T) {
	m := mac("52:54:00:12:34:56")
	b, err := fdbGetRequest(4, m, 10)
	if err != nil {
		t.Fatal(err)
	}
	ndm := []byte{unix.AF_BRIDGE, 0, 0, 0, 0, 0, 0, 0, 0, 0, unix.NTF_MASTER, 0}
	want := bytes.Join([][]byte{ndm, nla(unix.NDA_LLADDR, m), nla(unix.NDA_MASTER, u32(4)), nla(unix.NDA_VLAN, u16(10))}, nil)
	if !bytes.Equal(b, want) {
		t.Fatalf("request\n%x\nwant\n%x", b, want)
	}
	b, _ = fdbGetRequest(4, m, 0)
	want = bytes.Join([][]byte{ndm, nla(unix.NDA_LLADDR, m), nla(unix.NDA_MASTER, u32(4))}, nil)
	if !bytes.Equal(b, want) {
		t.Fatalf("vlan 0 request\n%x\nwant\n%x", b, want)
	}
}
