package sniff

import (
	"net"
	"net/netip"
	"testing"

	"golang.org/x/net/bpf"

	"github.com/selfannounce/selfannounce/announce/frame"
)

func filterVM(t testing.TB) *bpf.VM {
	t.Helper()
	vm, err := bpf.NewVM(filterProgram)
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

// stripTag is what the kernel hands a packet socket on receive: the tag
// moved out of the data.
func stripTag(b []byte) []byte {
	return append(append([]byte(nil), b[:12]...), b[16:]...)
}

func TestFilter(t *testing.T) {
	vm := filterVM(t)
	mac := net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}
	var pass [][]byte
	for _, vlan := range []uint16{0, 5} {
		r, _ := frame.RARP(mac, vlan)
		g, _ := frame.GARP(mac, netip.MustParseAddr("192.0.2.1"), vlan)
		n, _ := frame.NA(mac, netip.MustParseAddr("fe80::1"), vlan)
		pass = append(pass, r, g, n)
		if vlan != 0 {
			pass = append(pass, stripTag(r), stripTag(g), stripTag(n))
			ad := append([]byte(nil), g...)
			ad[12], ad[13] = 0x88, 0xa8
			pass = append(pass, ad)
		}
	}
	legacy, _ := frame.RARP(mac, 0)
	legacy[12], legacy[13] = 0x08, 0x35
	pass = append(pass, legacy)
	for _, b := range pass {
		if _, ok := Decode(b); !ok {
			t.Fatalf("test frame does not decode: %x", b)
		}
		if n, err := vm.Run(b); err != nil || n != snapLen {
			t.Errorf("filter returned %d (err %v) for announcement %x", n, err, b)
		}
	}

	g, _ := frame.GARP(mac, netip.MustParseAddr("192.0.2.1"), 0)
	gTagged, _ := frame.GARP(mac, netip.MustParseAddr("192.0.2.1"), 5)
	n, _ := frame.NA(mac, netip.MustParseAddr("2001:db8::1"), 0)
	drop := map[string][]byte{
		"ARP request":           edit(g, func(b []byte) { b[41] = 9 }),
		"tagged ARP request":    edit(gTagged, func(b []byte) { b[45] = 9 }),
		"ARP probe":             edit(g, func(b []byte) { copy(b[28:32], make([]byte, 4)); copy(b[38:42], make([]byte, 4)) }),
		"solicited NA":          edit(n, func(b []byte) { b[58] = 0x60 }),
		"neighbour solicit":     edit(n, func(b []byte) { b[54] = 135 }),
		"UDP over IPv6":         edit(n, func(b []byte) { b[20] = 17 }),
		"IPv4":                  edit(g, func(b []byte) { b[12], b[13] = 0x08, 0x00 }),
		"truncated ARP":         g[:40],
		"truncated NA":          n[:58],
		"too short to say":      g[:13],
		"tag without ethertype": gTagged[:16],
	}
	for name, b := range drop {
		if got, err := vm.Run(b); err != nil || got != 0 {
			t.Errorf("%s: filter returned %d (err %v), want 0", name, got, err)
		}
	}
}

func edit(b []byte, fn func([]byte)) []byte {
	c := append([]byte(nil), b...)
	fn(c)
	return c
}
