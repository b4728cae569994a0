package sniff_test

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/frame"
	"github.com/selfannounce/selfannounce/announce/sniff"
)

var (
	guestMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	otherMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x99}
	ip4      = netip.MustParseAddr("192.0.2.10")
	ip6      = netip.MustParseAddr("2001:db8::10")
	ip6LL    = netip.MustParseAddr("fe80::5054:ff:fe12:3456")
)

func mustFrame(t testing.TB, b []byte, err error) []byte {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func rarp(t testing.TB, vlan uint16) []byte {
	b, err := frame.RARP(guestMAC, vlan)
	return mustFrame(t, b, err)
}

func garp(t testing.TB, vlan uint16) []byte {
	b, err := frame.GARP(guestMAC, ip4, vlan)
	return mustFrame(t, b, err)
}

func na(t testing.TB, ip netip.Addr, vlan uint16) []byte {
	b, err := frame.NA(guestMAC, ip, vlan)
	return mustFrame(t, b, err)
}

// edit returns a copy of b with fn applied, using offsets of an untagged frame.
func edit(b []byte, fn func(b []byte)) []byte {
	c := append([]byte(nil), b...)
	fn(c)
	return c
}

func TestDecodeAnnouncements(t *testing.T) {
	type want struct {
		kind sniff.Kind
		vlan uint16
		mac  net.HardwareAddr
		ip   netip.Addr
	}
	cases := []struct {
		name string
		b    []byte
		want want
	}{
		{"rarp", rarp(t, 0), want{sniff.RARP, 0, guestMAC, netip.Addr{}}},
		{"rarp vlan 5", rarp(t, 5), want{sniff.RARP, 5, guestMAC, netip.Addr{}}},
		{"rarp legacy", edit(rarp(t, 0), func(b []byte) { b[12], b[13] = 0x08, 0x35 }), want{sniff.RARPLegacy, 0, guestMAC, netip.Addr{}}},
		{"garp", garp(t, 0), want{sniff.GARPRequest, 0, guestMAC, ip4}},
		{"garp vlan 4094", garp(t, 4094), want{sniff.GARPRequest, 4094, guestMAC, ip4}},
		{"garp reply", edit(garp(t, 0), func(b []byte) { b[21] = 2 }), want{sniff.GARPReply, 0, guestMAC, ip4}},
		{"garp 802.1ad", edit(garp(t, 7), func(b []byte) { b[12], b[13] = 0x88, 0xa8 }), want{sniff.GARPRequest, 7, guestMAC, ip4}},
		{"garp with PCP", edit(garp(t, 7), func(b []byte) { b[14] |= 0xe0 }), want{sniff.GARPRequest, 7, guestMAC, ip4}},
		{"garp sender HW differs from eth src", edit(garp(t, 0), func(b []byte) { copy(b[6:12], otherMAC) }), want{sniff.GARPRequest, 0, guestMAC, ip4}},
		{"na", na(t, ip6, 0), want{sniff.UnsolicitedNA, 0, guestMAC, ip6}},
		{"na link-local vlan 5", na(t, ip6LL, 5), want{sniff.UnsolicitedNA, 5, guestMAC, ip6LL}},
		{"na unicast dst", edit(na(t, ip6, 0), func(b []byte) { copy(b[0:6], otherMAC); copy(b[38:54], ip6LL.AsSlice()) }), want{sniff.UnsolicitedNA, 0, guestMAC, ip6}},
		{"na LLA differs from eth src", edit(na(t, ip6, 0), func(b []byte) { copy(b[80:86], otherMAC) }), want{sniff.UnsolicitedNA, 0, otherMAC, ip6}},
		{"na without option", edit(na(t, ip6, 0), func(b []byte) { b[19] = 24 })[:78], want{sniff.UnsolicitedNA, 0, guestMAC, ip6}},
		{"na with trailing padding", append(edit(na(t, ip6, 0), func(b []byte) { b[19] = 24 })[:78], 2, 1, 1, 1, 1, 1, 1, 1), want{sniff.UnsolicitedNA, 0, guestMAC, ip6}},
		{"na source LLA then target LLA", append(edit(na(t, ip6, 0), func(b []byte) {
			b[19] = 40
			copy(b[78:], []byte{1, 1, 2, 0, 0, 0, 0, 1}) // source LLA first
		}), 2, 1, 0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee), want{sniff.UnsolicitedNA, 0, net.HardwareAddr{0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee}, ip6}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := c.b
			a, ok := sniff.Decode(b)
			if !ok {
				t.Fatalf("not decoded: %x", b)
			}
			if a.Kind != c.want.kind || a.VLAN != c.want.vlan || !bytes.Equal(a.MAC, c.want.mac) || a.IP != c.want.ip {
				t.Errorf("got %v vlan %d mac %s ip %s, want %v vlan %d mac %s ip %s",
					a.Kind, a.VLAN, a.MAC, a.IP, c.want.kind, c.want.vlan, c.want.mac, c.want.ip)
			}
			if !bytes.Equal(a.SrcMAC, b[6:12]) {
				t.Errorf("src MAC %s, want %s", a.SrcMAC, net.HardwareAddr(b[6:12]))
			}
			// The result must not alias the buffer a capture loop reuses.
			for i := range b {
				b[i] = 0xaa
			}
			if !bytes.Equal(a.MAC, c.want.mac) || a.SrcMAC.String() == "aa:aa:aa:aa:aa:aa" {
				t.Errorf("Announcement aliases the frame buffer")
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	ipv4UDP, _ := hex.DecodeString("ffffffffffff52540012345608004500001c000000004011000000000000ffffffff0044004300080000")
	cases := map[string][]byte{
		"empty":                nil,
		"ARP request":          edit(garp(t, 0), func(b []byte) { b[41] = 1 }),
		"ARP probe":            edit(garp(t, 0), func(b []byte) { copy(b[28:32], []byte{0, 0, 0, 0}); copy(b[38:42], []byte{0, 0, 0, 0}) }),
		"ARP op 3":             edit(garp(t, 0), func(b []byte) { b[21] = 3 }),
		"ARP for IPv6":         edit(garp(t, 0), func(b []byte) { b[16] = 0x86 }),
		"ARP hlen 8":           edit(garp(t, 0), func(b []byte) { b[18] = 8 }),
		"ARP htype 6":          edit(garp(t, 0), func(b []byte) { b[15] = 6 }),
		"RARP reply":           edit(rarp(t, 0), func(b []byte) { b[21] = 4 }),
		"RARP plen 16":         edit(rarp(t, 0), func(b []byte) { b[19] = 16 }),
		"solicited NA":         edit(na(t, ip6, 0), func(b []byte) { b[58] |= 0x40 }),
		"neighbour solicit":    edit(na(t, ip6, 0), func(b []byte) { b[54] = 135 }),
		"NA behind hop-by-hop": edit(na(t, ip6, 0), func(b []byte) { b[20] = 0 }),
		"IPv4 in IPv6 type":    edit(na(t, ip6, 0), func(b []byte) { b[14] = 0x45 }),
		"NA short payload len": edit(na(t, ip6, 0), func(b []byte) { b[19] = 20 }),
		"double tagged": func() []byte {
			b := garp(t, 5)
			return append(append(append([]byte(nil), b[:12]...), 0x88, 0xa8, 0, 9), b[12:]...)
		}(),
		"IPv4":          ipv4UDP,
		"tag only":      garp(t, 5)[:16],
		"untagged stub": garp(t, 0)[:13],
	}
	for name, b := range cases {
		if a, ok := sniff.Decode(b); ok {
			t.Errorf("%s: decoded as %+v", name, a)
		}
	}
	// Every truncation of a real announcement either decodes or not, but
	// never panics, and cutting into the ARP or NA body must reject it.
	for _, b := range [][]byte{rarp(t, 0), garp(t, 5), na(t, ip6, 0), na(t, ip6, 5)} {
		tag := 0
		if binary.BigEndian.Uint16(b[12:]) == 0x8100 {
			tag = 4
		}
		minLen := map[bool]int{true: 14 + tag + 28, false: 14 + tag + 40 + 24}[len(b) <= 64]
		for n := 0; n < minLen; n++ {
			if a, ok := sniff.Decode(b[:n]); ok {
				t.Errorf("truncated to %d bytes of %d still decodes as %+v", n, len(b), a)
			}
		}
	}
}

// TestDecodeRound decodes whole rounds from announce/frame, the pairing the
// daemon's end-to-end tests rely on.
func TestDecodeRound(t *testing.T) {
	g := announce.Guest{MAC: guestMAC, IPs: []netip.Addr{ip4, ip6, ip6LL, netip.MustParseAddr("198.51.100.1")}}
	for _, vlan := range []uint16{0, 1, 5, 4094} {
		fs, err := frame.Round(g, vlan)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fs {
			a, ok := sniff.Decode(f.Data)
			want := map[frame.Kind]sniff.Kind{frame.KindRARP: sniff.RARP, frame.KindGARP: sniff.GARPRequest, frame.KindNA: sniff.UnsolicitedNA}[f.Kind]
			if !ok || a.Kind != want || a.VLAN != vlan || a.IP != f.IP || !bytes.Equal(a.MAC, guestMAC) {
				t.Errorf("%s %s vlan %d decodes as %+v (ok %v)", f.Kind, f.IP, vlan, a, ok)
			}
		}
	}
}

func TestKindString(t *testing.T) {
	for k, s := range map[sniff.Kind]string{
		sniff.RARP: "rarp", sniff.RARPLegacy: "rarp-0835", sniff.GARPRequest: "garp-request",
		sniff.GARPReply: "garp-reply", sniff.UnsolicitedNA: "unsolicited-na", 0: "kind(0)",
	} {
		if k.String() != s {
			t.Errorf("Kind(%d) = %q, want %q", uint8(k), k.String(), s)
		}
	}
}

func TestEventFormats(t *testing.T) {
	ts := time.Date(2026, 5, 4, 3, 2, 1, 123456789, time.UTC)
	garpEv := sniff.Event{Time: ts, Interface: "vif3.0", Announcement: sniff.Announcement{
		Kind: sniff.GARPRequest, VLAN: 5, SrcMAC: otherMAC, MAC: guestMAC, IP: ip4}}
	rarpEv := sniff.Event{Time: ts, Interface: "eth0", Announcement: sniff.Announcement{
		Kind: sniff.RARP, SrcMAC: guestMAC, MAC: guestMAC}}

	for ev, want := range map[*sniff.Event]string{
		&garpEv: "2026-05-04T03:02:01.123456789Z vif3.0 5 garp-request 52:54:00:12:34:56 192.0.2.10",
		&rarpEv: "2026-05-04T03:02:01.123456789Z eth0 - rarp 52:54:00:12:34:56 -",
	} {
		if got := ev.String(); got != want {
			t.Errorf("String() = %q, want %q", got, want)
		}
	}
	for ev, want := range map[*sniff.Event]string{
		&garpEv: `{"time":"2026-05-04T03:02:01.123456789Z","interface":"vif3.0","vlan":5,"kind":"garp-request","mac":"52:54:00:12:34:56","ip":"192.0.2.10","src_mac":"02:00:00:00:00:99"}`,
		&rarpEv: `{"time":"2026-05-04T03:02:01.123456789Z","interface":"eth0","vlan":0,"kind":"rarp","mac":"52:54:00:12:34:56","ip":null,"src_mac":"52:54:00:12:34:56"}`,
	} {
		// Through json.Marshal, as the CLI's encoder will call it.
		got, err := json.Marshal(*ev)
		if err != nil || string(got) != want {
			t.Errorf("JSON = %s (err %v), want %s", got, err, want)
		}
	}
}
