package sniff

import (
	"net"
	"net/netip"
	"testing"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/frame"
)

// FuzzDecode checks Decode never panics, that what it accepts is
// well-formed, and that the kernel filter never drops a frame Decode would
// accept.
func FuzzDecode(f *testing.F) {
	g := announce.Guest{
		MAC: net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56},
		IPs: []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("fe80::1")},
	}
	for _, vlan := range []uint16{0, 5, 4094} {
		fs, err := frame.Round(g, vlan)
		if err != nil {
			f.Fatal(err)
		}
		for _, fr := range fs {
			f.Add(fr.Data)
			if vlan != 0 {
				f.Add(stripTag(fr.Data))
			}
			f.Add(fr.Data[:len(fr.Data)/2])
		}
	}
	f.Add([]byte{})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0x81, 0x00})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0x88, 0xa8, 0, 1, 0x81, 0, 0, 2, 0x08, 0x06})
	f.Add([]byte("\x33\x33\x00\x00\x00\x01\x02\x00\x00\x00\x00\x01\x86\xdd`\x00\x00\x00\x00\x08:\xff"))

	vm := filterVM(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		a, ok := Decode(b)
		if !ok {
			if a.Kind != 0 || a.MAC != nil || a.SrcMAC != nil || a.IP.IsValid() {
				t.Fatalf("rejected frame still returned %+v", a)
			}
			return
		}
		if a.Kind.String() == "kind(0)" || len(a.MAC) != 6 || len(a.SrcMAC) != 6 || a.VLAN > 0xfff {
			t.Fatalf("accepted frame %x gave malformed %+v", b, a)
		}
		if isRARP := a.Kind == RARP || a.Kind == RARPLegacy; isRARP == a.IP.IsValid() {
			t.Fatalf("%v with IP %v", a.Kind, a.IP)
		}
		if n, err := vm.Run(b); err != nil || n == 0 {
			t.Fatalf("filter drops announcement %x (%+v)", b, a)
		}
	})
}
