package frame_test

import (
	"bytes"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/frame"
)

var (
	guestMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	ip4      = netip.MustParseAddr("192.0.2.10")
	ip6      = netip.MustParseAddr("2001:db8::10")
	ip6LL    = netip.MustParseAddr("fe80::5054:ff:fe12:3456")
)

// Golden frames, checked field by field against tcpdump 4.99 ("icmp6 sum
// ok" for the NAs) and, for the untagged RARP, against QEMU 7.2's capture.
var golden = []struct {
	name string
	kind frame.Kind
	ip   netip.Addr
	vlan uint16
	hex  string
}{
	{"rarp", frame.KindRARP, netip.Addr{}, 0,
		"ffffffffffff525400123456803500010800060400035254001234560000000052540012345600000000000000000000000000000000000000000000"},
	{"garp", frame.KindGARP, ip4, 0,
		"ffffffffffff52540012345608060001080006040001525400123456c000020a000000000000c000020a000000000000000000000000000000000000"},
	{"na", frame.KindNA, ip6, 0,
		"33330000000152540012345686dd6000000000203aff20010db8000000000000000000000010ff020000000000000000000000000001880074512000000020010db80000000000000000000000100201525400123456"},
	{"na-linklocal", frame.KindNA, ip6LL, 0,
		"33330000000152540012345686dd6000000000203afffe80000000000000505400fffe123456ff0200000000000000000000000000018800cb6820000000fe80000000000000505400fffe1234560201525400123456"},
	{"rarp-vlan5", frame.KindRARP, netip.Addr{}, 5,
		"ffffffffffff52540012345681000005803500010800060400035254001234560000000052540012345600000000000000000000000000000000000000000000"},
	{"garp-vlan5", frame.KindGARP, ip4, 5,
		"ffffffffffff5254001234568100000508060001080006040001525400123456c000020a000000000000c000020a000000000000000000000000000000000000"},
	{"na-vlan5", frame.KindNA, ip6, 5,
		"3333000000015254001234568100000586dd6000000000203aff20010db8000000000000000000000010ff020000000000000000000000000001880074512000000020010db80000000000000000000000100201525400123456"},
	{"na-linklocal-vlan5", frame.KindNA, ip6LL, 5,
		"3333000000015254001234568100000586dd6000000000203afffe80000000000000505400fffe123456ff0200000000000000000000000000018800cb6820000000fe80000000000000505400fffe1234560201525400123456"},
	// 4094 is the highest VLAN a tag may carry.
	{"garp-vlan4094", frame.KindGARP, ip4, 4094,
		"ffffffffffff52540012345681000ffe08060001080006040001525400123456c000020a000000000000c000020a000000000000000000000000000000000000"},
}

func build(t testing.TB, kind frame.Kind, mac net.HardwareAddr, ip netip.Addr, vlan uint16) []byte {
	t.Helper()
	var (
		b   []byte
		err error
	)
	switch kind {
	case frame.KindRARP:
		b, err = frame.RARP(mac, vlan)
	case frame.KindGARP:
		b, err = frame.GARP(mac, ip, vlan)
	case frame.KindNA:
		b, err = frame.NA(mac, ip, vlan)
	}
	if err != nil {
		t.Fatalf("%s %s vlan %d: %v", kind, ip, vlan, err)
	}
	return b
}

func TestGolden(t *testing.T) {
	for _, g := range golden {
		t.Run(g.name, func(t *testing.T) {
			want, _ := hex.DecodeString(g.hex)
			got := build(t, g.kind, guestMAC, g.ip, g.vlan)
			if !bytes.Equal(got, want) {
				t.Errorf("frame differs from golden\n got %x\nwant %x", got, want)
			}
			// The fast path must agree with the reference builders.
			round, err := frame.Round(announce.Guest{MAC: guestMAC, IPs: ipsFor(g.ip)}, g.vlan)
			if err != nil {
				t.Fatal(err)
			}
			f := round[len(round)-1]
			if f.Kind != g.kind || f.IP != g.ip || !bytes.Equal(f.Data, want) {
				t.Errorf("Round's %s %s differs from golden\n got %x\nwant %x", f.Kind, f.IP, f.Data, want)
			}
		})
	}
}

func ipsFor(ip netip.Addr) []netip.Addr {
	if !ip.IsValid() {
		return nil
	}
	return []netip.Addr{ip}
}

func TestSizes(t *testing.T) {
	for _, vlan := range []uint16{0, 1, 100} {
		tag := 0
		if vlan != 0 {
			tag = 4
		}
		for kind, size := range map[frame.Kind]int{frame.KindRARP: 60, frame.KindGARP: 60, frame.KindNA: 86} {
			ip := map[frame.Kind]netip.Addr{frame.KindGARP: ip4, frame.KindNA: ip6}[kind]
			if n := len(build(t, kind, guestMAC, ip, vlan)); n != size+tag {
				t.Errorf("%s vlan %d is %d bytes, want %d", kind, vlan, n, size+tag)
			}
		}
	}
}

// TestQEMUCapture holds RARP to what QEMU 7.2's announce-self really sent.
func TestQEMUCapture(t *testing.T) {
	// Captured from QEMU 7.2 `announce-self` for MAC 52:54:00:12:34:56;
	// it lives in the repository so a clone needs nothing else.
	f, err := os.Open("testdata/qemu-7.2-announce-self.pcap")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	if r.LinkType() != layers.LinkTypeEthernet {
		t.Fatalf("capture link type %v, want Ethernet", r.LinkType())
	}
	want, err := frame.RARP(guestMAC, 0)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		data, ci, err := r.ReadPacketData()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
		if ci.CaptureLength != ci.Length {
			t.Fatalf("frame %d truncated in capture", n)
		}
		if !bytes.Equal(data, want) {
			t.Errorf("frame %d: QEMU sent\n%x\nwe build\n%x", n, data, want)
		}
	}
	// announce-self's default is five rounds.
	if n != 5 {
		t.Errorf("capture holds %d frames, want QEMU's 5", n)
	}
}

// decodeEthernet decodes b with gopacket, which shares no code with the
// builders, and returns the layers after Ethernet and any 802.1Q tag.
func decodeEthernet(t *testing.T, b []byte, vlan uint16) gopacket.Packet {
	t.Helper()
	p := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.Default)
	// gopacket has no RARP decoder; everything before the payload must still decode.
	if el := p.ErrorLayer(); el != nil && !strings.Contains(el.Error().Error(), "EthernetType 32821") {
		t.Fatalf("gopacket: %v", el.Error())
	}
	eth := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	if !bytes.Equal(eth.SrcMAC, guestMAC) {
		t.Errorf("eth src %s, want %s", eth.SrcMAC, guestMAC)
	}
	q, _ := p.Layer(layers.LayerTypeDot1Q).(*layers.Dot1Q)
	switch {
	case vlan == 0 && q != nil:
		t.Errorf("untagged frame carries VLAN %d", q.VLANIdentifier)
	case vlan != 0 && q == nil:
		t.Errorf("frame for VLAN %d is untagged", vlan)
	case vlan != 0 && eth.EthernetType != layers.EthernetTypeDot1Q:
		t.Errorf("TPID %#x, want 0x8100", uint16(eth.EthernetType))
	case vlan != 0 && (q.VLANIdentifier != vlan || q.Priority != 0 || q.DropEligible):
		t.Errorf("tag %+v, want VLAN %d PCP 0", q, vlan)
	}
	return p
}

func TestNADecodesWithGopacket(t *testing.T) {
	for _, vlan := range []uint16{0, 5, 4094} {
		for _, ip := range []netip.Addr{ip6, ip6LL, netip.MustParseAddr("2001:db8:ffff:ffff:ffff:ffff:ffff:fffe")} {
			b := build(t, frame.KindNA, guestMAC, ip, vlan)
			p := decodeEthernet(t, b, vlan)
			eth := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
			if eth.DstMAC.String() != "33:33:00:00:00:01" {
				t.Errorf("eth dst %s, want 33:33:00:00:00:01", eth.DstMAC)
			}
			v6, ok := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
			if !ok {
				t.Fatalf("no IPv6 layer in %x", b)
			}
			if v6.SrcIP.String() != ip.String() || v6.DstIP.String() != "ff02::1" ||
				v6.HopLimit != 255 || v6.NextHeader != layers.IPProtocolICMPv6 || v6.Length != 32 {
				t.Errorf("IPv6 header %s > %s hlim %d nh %d len %d", v6.SrcIP, v6.DstIP, v6.HopLimit, v6.NextHeader, v6.Length)
			}
			icmp := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
			if icmp.TypeCode != layers.CreateICMPv6TypeCode(layers.ICMPv6TypeNeighborAdvertisement, 0) {
				t.Errorf("ICMPv6 %v, want neighbour advertisement code 0", icmp.TypeCode)
			}
			icmp.SetNetworkLayerForChecksum(v6)
			if err, res := icmp.VerifyChecksum(); err != nil || !res.Valid {
				t.Errorf("ICMPv6 checksum %#x, gopacket computes %#x (err %v)", res.Actual, res.Correct, err)
			}
			na, ok := p.Layer(layers.LayerTypeICMPv6NeighborAdvertisement).(*layers.ICMPv6NeighborAdvertisement)
			if !ok {
				t.Fatalf("no neighbour advertisement layer in %x", b)
			}
			if na.Router() || na.Solicited() || !na.Override() {
				t.Errorf("flags %#x, want Override only", na.Flags)
			}
			if na.TargetAddress.String() != ip.String() {
				t.Errorf("target %s, want %s", na.TargetAddress, ip)
			}
			if len(na.Options) != 1 || na.Options[0].Type != layers.ICMPv6OptTargetAddress ||
				!bytes.Equal(na.Options[0].Data, guestMAC) {
				t.Errorf("options %v, want only Target Link-Layer Address %s", na.Options, guestMAC)
			}
		}
	}
}

// TestChecksumVerifierCatchesCorruption shows the gopacket check above can
// fail: a flipped bit in the target must break the checksum.
func TestChecksumVerifierCatchesCorruption(t *testing.T) {
	b := build(t, frame.KindNA, guestMAC, ip6, 0)
	b[70] ^= 1
	p := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.Default)
	icmp := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
	icmp.SetNetworkLayerForChecksum(p.Layer(layers.LayerTypeIPv6).(*layers.IPv6))
	if _, res := icmp.VerifyChecksum(); res.Valid {
		t.Fatal("corrupted NA passed checksum verification")
	}
}

func TestARPDecodesWithGopacket(t *testing.T) {
	for _, vlan := range []uint16{0, 5} {
		garp := build(t, frame.KindGARP, guestMAC, ip4, vlan)
		p := decodeEthernet(t, garp, vlan)
		a, ok := p.Layer(layers.LayerTypeARP).(*layers.ARP)
		if !ok {
			t.Fatalf("no ARP layer in %x", garp)
		}
		if a.Operation != layers.ARPRequest || a.AddrType != layers.LinkTypeEthernet || a.Protocol != layers.EthernetTypeIPv4 ||
			!bytes.Equal(a.SourceHwAddress, guestMAC) || !bytes.Equal(a.DstHwAddress, make([]byte, 6)) ||
			!bytes.Equal(a.SourceProtAddress, ip4.AsSlice()) || !bytes.Equal(a.DstProtAddress, ip4.AsSlice()) {
			t.Errorf("GARP decodes as %+v", a)
		}
		if eth := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet); eth.DstMAC.String() != "ff:ff:ff:ff:ff:ff" {
			t.Errorf("GARP eth dst %s, want broadcast", eth.DstMAC)
		}

		// gopacket has no RARP decoder, but RARP shares ARP's layout.
		rarp := build(t, frame.KindRARP, guestMAC, netip.Addr{}, vlan)
		p = decodeEthernet(t, rarp, vlan)
		eth := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
		et, payload := eth.EthernetType, eth.Payload
		if q, ok := p.Layer(layers.LayerTypeDot1Q).(*layers.Dot1Q); ok {
			et, payload = q.Type, q.Payload
		}
		if et != frame.EtherTypeRARP || eth.DstMAC.String() != "ff:ff:ff:ff:ff:ff" {
			t.Errorf("RARP ethertype %#x dst %s", uint16(et), eth.DstMAC)
		}
		var r layers.ARP
		if err := r.DecodeFromBytes(payload, gopacket.NilDecodeFeedback); err != nil {
			t.Fatal(err)
		}
		if r.Operation != 3 || r.AddrType != layers.LinkTypeEthernet || r.Protocol != layers.EthernetTypeIPv4 ||
			r.HwAddressSize != 6 || r.ProtAddressSize != 4 ||
			!bytes.Equal(r.SourceHwAddress, guestMAC) || !bytes.Equal(r.DstHwAddress, guestMAC) ||
			!bytes.Equal(r.SourceProtAddress, make([]byte, 4)) || !bytes.Equal(r.DstProtAddress, make([]byte, 4)) {
			t.Errorf("RARP decodes as %+v", r)
		}
		if !bytes.Equal(payload[28:], make([]byte, len(payload)-28)) {
			t.Errorf("RARP padding not zero: %x", payload[28:])
		}
	}
}

func TestRoundOrder(t *testing.T) {
	g := announce.Guest{MAC: guestMAC, IPs: []netip.Addr{
		ip6, netip.MustParseAddr("198.51.100.7"), ip6LL, ip4,
		netip.MustParseAddr("::ffff:203.0.113.9"), // mapped IPv4 is announced as IPv4
	}}
	fs, err := frame.Round(g, 7)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range fs {
		got = append(got, f.Kind.String()+" "+f.IP.String())
	}
	want := []string{"rarp invalid IP", "garp 198.51.100.7", "garp 192.0.2.10", "garp 203.0.113.9", "na 2001:db8::10", "na fe80::5054:ff:fe12:3456"}
	if strings.Join(got, ", ") != strings.Join(want, ", ") {
		t.Errorf("round is\n%s\nwant\n%s", strings.Join(got, ", "), strings.Join(want, ", "))
	}
}

// TestRoundMatchesBuilders holds the patched templates of Round to the
// reference builders across many guests.
func TestRoundMatchesBuilders(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 2000; i++ {
		mac := make(net.HardwareAddr, 6)
		for j := range mac {
			mac[j] = byte(rng.Uint32())
		}
		mac[0] &^= 1
		if announce.CheckGuestMAC(mac) != nil {
			continue
		}
		var ips []netip.Addr
		for n := rng.IntN(5); n > 0; n-- {
			var ip netip.Addr
			if rng.IntN(2) == 0 {
				ip = netip.AddrFrom4([4]byte{byte(1 + rng.IntN(223)), byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32())})
			} else {
				var a [16]byte
				for j := range a {
					a[j] = byte(rng.Uint32())
				}
				a[0] = 0x20
				ip = netip.AddrFrom16(a)
			}
			if announce.AnnounceableIP(ip) && !ip.IsLoopback() {
				ips = append(ips, ip)
			}
		}
		vlan := uint16(rng.IntN(4095))
		fs, err := frame.Round(announce.Guest{MAC: mac, IPs: ips}, vlan)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fs {
			if want := build(t, f.Kind, mac, f.IP, vlan); !bytes.Equal(f.Data, want) {
				t.Fatalf("Round's %s for %s %s vlan %d\n got %x\nwant %x", f.Kind, mac, f.IP, vlan, f.Data, want)
			}
		}
	}
}

func TestAppendRoundIsolatesFrames(t *testing.T) {
	fs, err := frame.AppendRound(nil, announce.Guest{MAC: guestMAC, IPs: []netip.Addr{ip4, ip6}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	next := append([]byte(nil), fs[1].Data...)
	_ = append(fs[0].Data, 0xee, 0xee, 0xee, 0xee)
	if !bytes.Equal(fs[1].Data, next) {
		t.Fatal("appending to one frame overwrote the next")
	}
	// Appending to an existing slice keeps what was there.
	fs2, err := frame.AppendRound(fs[:1], announce.Guest{MAC: guestMAC}, 5)
	if err != nil || len(fs2) != 2 || fs2[0].Kind != frame.KindRARP || len(fs2[1].Data) != 64 {
		t.Fatalf("AppendRound onto one frame gave %d frames, err %v", len(fs2), err)
	}
}

func TestRejects(t *testing.T) {
	bad := []struct {
		name string
		err  func() error
		want string
	}{
		{"multicast MAC", func() error { _, err := frame.RARP(net.HardwareAddr{1, 0, 0x5e, 0, 0, 1}, 0); return err }, "multicast"},
		{"zero MAC", func() error { _, err := frame.GARP(make(net.HardwareAddr, 6), ip4, 0); return err }, "all-zero"},
		{"Xen vif MAC", func() error { _, err := frame.NA(announce.XenVifMAC, ip6, 0); return err }, "Xen"},
		{"EUI-64 MAC", func() error { _, err := frame.RARP(make(net.HardwareAddr, 8), 0); return err }, "48-bit"},
		{"VLAN 4095", func() error { _, err := frame.RARP(guestMAC, 4095); return err }, "VLAN 4095"},
		{"VLAN 65535", func() error { _, err := frame.NA(guestMAC, ip6, 65535); return err }, "VLAN 65535"},
		{"GARP for IPv6", func() error { _, err := frame.GARP(guestMAC, ip6, 0); return err }, "needs an IPv4"},
		{"GARP for mapped IPv4", func() error {
			_, err := frame.GARP(guestMAC, netip.MustParseAddr("::ffff:192.0.2.1"), 0)
			return err
		}, "needs an IPv4"},
		{"NA for IPv4", func() error { _, err := frame.NA(guestMAC, ip4, 0); return err }, "needs an IPv6"},
		{"GARP without IP", func() error { _, err := frame.GARP(guestMAC, netip.Addr{}, 0); return err }, "got none"},
		{"GARP broadcast", func() error {
			_, err := frame.GARP(guestMAC, netip.MustParseAddr("255.255.255.255"), 0)
			return err
		}, "not unicast"},
		{"GARP multicast", func() error { _, err := frame.GARP(guestMAC, netip.MustParseAddr("224.0.0.1"), 0); return err }, "not unicast"},
		{"GARP unspecified", func() error { _, err := frame.GARP(guestMAC, netip.MustParseAddr("0.0.0.0"), 0); return err }, "not unicast"},
		{"NA multicast", func() error { _, err := frame.NA(guestMAC, netip.MustParseAddr("ff02::1"), 0); return err }, "not unicast"},
		{"NA loopback", func() error { _, err := frame.NA(guestMAC, netip.MustParseAddr("::1"), 0); return err }, "not unicast"},
		{"Round bad MAC", func() error {
			_, err := frame.Round(announce.Guest{MAC: announce.XenVifMAC, IPs: []netip.Addr{ip4}}, 0)
			return err
		}, "Xen"},
		{"Round bad IP", func() error {
			_, err := frame.Round(announce.Guest{MAC: guestMAC, IPs: []netip.Addr{ip4, netip.MustParseAddr("127.0.0.1")}}, 0)
			return err
		}, "127.0.0.1 cannot be announced"},
		{"Round invalid IP", func() error {
			_, err := frame.Round(announce.Guest{MAC: guestMAC, IPs: []netip.Addr{{}}}, 0)
			return err
		}, "got none"},
		{"Round bad VLAN", func() error { _, err := frame.Round(announce.Guest{MAC: guestMAC}, 5000); return err }, "VLAN 5000"},
	}
	for _, b := range bad {
		err := b.err()
		if err == nil || !strings.Contains(err.Error(), b.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error %v, want one line containing %q", b.name, err, b.want)
		}
	}
}

func TestKindString(t *testing.T) {
	for k, s := range map[frame.Kind]string{frame.KindRARP: "rarp", frame.KindGARP: "garp", frame.KindNA: "na", 0: "kind(0)"} {
		if k.String() != s {
			t.Errorf("Kind(%d).String() = %q, want %q", uint8(k), k.String(), s)
		}
	}
}

var benchGuest = announce.Guest{MAC: guestMAC, IPs: []netip.Addr{
	ip4, netip.MustParseAddr("198.51.100.7"), ip6, ip6LL,
}}

func BenchmarkRound(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := frame.Round(benchGuest, 5); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendRound(b *testing.B) {
	b.ReportAllocs()
	var fs []frame.Frame
	for b.Loop() {
		var err error
		if fs, err = frame.AppendRound(fs[:0], benchGuest, 5); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBuilders is the cost Round avoids: the same round through the
// reference builders.
func BenchmarkBuilders(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		frame.RARP(guestMAC, 5)
		for _, ip := range benchGuest.IPs {
			if ip.Is4() {
				frame.GARP(guestMAC, ip, 5)
			} else {
				frame.NA(guestMAC, ip, 5)
			}
		}
	}
}
