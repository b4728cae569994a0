package doctor

import (
	"encoding/binary"
	"net"
	"testing"
)

var (
	switchPortMAC = net.HardwareAddr{0x00, 0x1c, 0x73, 0xaa, 0xbb, 0x01}
	switchSystem  = net.HardwareAddr{0x00, 0x1c, 0x73, 0xaa, 0xbb, 0x00}
)

// lacpdu builds a full 802.1AX LACPDU as a switch port sends it: 14-byte
// header, subtype 1, version 1, actor, partner, collector and terminator
// TLVs and 50 reserved bytes, 124 bytes in all.
func lacpdu(src, system net.HardwareAddr, key, port uint16) []byte {
	f := make([]byte, 0, 124)
	f = append(f, SlowProtocolsMAC...)
	f = append(f, src...)
	f = binary.BigEndian.AppendUint16(f, EtherTypeSlow)
	f = append(f, 0x01, 0x01) // subtype LACP, version 1
	// actor TLV
	f = append(f, 0x01, 0x14)
	f = binary.BigEndian.AppendUint16(f, 32768)
	f = append(f, system...)
	f = binary.BigEndian.AppendUint16(f, key)
	f = binary.BigEndian.AppendUint16(f, 32768)
	f = binary.BigEndian.AppendUint16(f, port)
	f = append(f, 0x45, 0, 0, 0) // state: activity, aggregation, defaulted
	// partner TLV: nobody answers, all zero
	f = append(f, 0x02, 0x14)
	f = append(f, make([]byte, 18)...)
	// collector TLV
	f = append(f, 0x03, 0x10)
	f = append(f, make([]byte, 14)...)
	// terminator and reserved
	f = append(f, 0x00, 0x00)
	f = append(f, make([]byte, 50)...)
	return f
}

func TestParseLACPDU(t *testing.T) {
	f := lacpdu(switchPortMAC, switchSystem, 17, 5)
	if len(f) != 124 {
		t.Fatalf("test frame is %d bytes", len(f))
	}
	d, ok := ParseLACPDU(f)
	if !ok {
		t.Fatal("LACPDU not recognised")
	}
	if d.Source.String() != switchPortMAC.String() || d.ActorSystem.String() != switchSystem.String() || d.ActorKey != 17 || d.ActorPort != 5 {
		t.Errorf("decoded %+v", d)
	}

	marker := append([]byte(nil), f...)
	marker[14] = 0x02 // Marker protocol
	wrongType := append([]byte(nil), f...)
	wrongType[12], wrongType[13] = 0x88, 0x08
	wrongDst := append([]byte(nil), f...)
	wrongDst[5] = 0x03
	badTLV := append([]byte(nil), f...)
	badTLV[17] = 0x10
	for name, frame := range map[string][]byte{
		"marker": marker, "ethertype": wrongType, "destination": wrongDst,
		"actor length": badTLV, "truncated": f[:30], "empty": nil,
	} {
		if _, ok := ParseLACPDU(frame); ok {
			t.Errorf("%s: accepted", name)
		}
	}
}
