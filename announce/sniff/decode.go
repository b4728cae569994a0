// Package sniff recognises announcements on the wire: RARP (QEMU's
// announce-self, in both its EtherTypes), gratuitous ARP and unsolicited
// IPv6 neighbour advertisements. Decode is pure and takes whole Ethernet
// frames; Run captures them from live interfaces.
package sniff

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
)

// Kind says which announcement was seen.
type Kind uint8

// Kinds of announcement. The zero Kind is deliberately invalid.
const (
	RARP Kind = iota + 1
	RARPLegacy
	GARPRequest
	GARPReply
	UnsolicitedNA
)

func (k Kind) String() string {
	switch k {
	case RARP:
		return "rarp"
	case RARPLegacy:
		return "rarp-0835"
	case GARPRequest:
		return "garp-request"
	case GARPReply:
		return "garp-reply"
	case UnsolicitedNA:
		return "unsolicited-na"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Announcement is what one frame announced.
type Announcement struct {
	Kind Kind
	// VLAN is the 802.1Q/802.1ad VLAN ID the frame carried, 0 if untagged.
	VLAN   uint16
	SrcMAC net.HardwareAddr
	// MAC is the address the frame announces: the RARP or ARP sender's
	// hardware address, or the NA's target link-layer address option
	// (the Ethernet source when the option is absent).
	MAC net.HardwareAddr
	// IP is the address announced; invalid for RARP.
	IP netip.Addr
}

const (
	etherTypeARP        = 0x0806
	etherTypeRARP       = 0x8035
	etherTypeRARPLegacy = 0x0835
	etherTypeIPv6       = 0x86dd
	tpid8021Q           = 0x8100
	tpid8021AD          = 0x88a8

	ethHeaderLen  = 14
	arpLen        = 28
	ipv6HeaderLen = 40
	naLen         = 24 // ICMPv6 header, flags and target

	icmpv6NA        = 136
	naFlagSolicited = 0x40
	ndpOptTargetLLA = 2
)

// Decode reports whether frame b, starting at the Ethernet header, is an
// announcement and what it announced. At most one VLAN tag is understood;
// stacked tags are not decoded. The result never aliases b.
func Decode(b []byte) (Announcement, bool) {
	if len(b) < ethHeaderLen {
		return Announcement{}, false
	}
	var a Announcement
	et := binary.BigEndian.Uint16(b[12:14])
	payload := b[ethHeaderLen:]
	if et == tpid8021Q || et == tpid8021AD {
		if len(b) < ethHeaderLen+4 {
			return Announcement{}, false
		}
		a.VLAN = binary.BigEndian.Uint16(b[14:16]) & 0x0fff
		et = binary.BigEndian.Uint16(b[16:18])
		payload = b[ethHeaderLen+4:]
	}
	var ok bool
	switch et {
	case etherTypeRARP, etherTypeRARPLegacy:
		ok = decodeRARP(&a, payload, et)
	case etherTypeARP:
		ok = decodeGARP(&a, payload)
	case etherTypeIPv6:
		ok = decodeNA(&a, payload, b[6:12])
	}
	if !ok {
		return Announcement{}, false
	}
	// One copy for both MACs, so the result outlives the capture buffer.
	macs := make([]byte, 12)
	copy(macs, b[6:12])
	copy(macs[6:], a.MAC)
	a.SrcMAC, a.MAC = macs[0:6:6], macs[6:12:12]
	return a, true
}

// arpHeaderOK accepts only Ethernet/IPv4 ARP, the only form announcements
// take; anything else would make the fixed offsets below wrong.
func arpHeaderOK(p []byte) bool {
	return len(p) >= arpLen &&
		binary.BigEndian.Uint16(p[0:2]) == 1 &&
		binary.BigEndian.Uint16(p[2:4]) == 0x0800 &&
		p[4] == 6 && p[5] == 4
}

func decodeRARP(a *Announcement, p []byte, et uint16) bool {
	// Only "request reverse" (3) announces; a reply (4) comes from a server.
	if !arpHeaderOK(p) || binary.BigEndian.Uint16(p[6:8]) != 3 {
		return false
	}
	a.Kind = RARP
	if et == etherTypeRARPLegacy {
		a.Kind = RARPLegacy
	}
	a.MAC = p[8:14]
	return true
}

func decodeGARP(a *Announcement, p []byte) bool {
	if !arpHeaderOK(p) {
		return false
	}
	switch binary.BigEndian.Uint16(p[6:8]) {
	case 1:
		a.Kind = GARPRequest
	case 2:
		a.Kind = GARPReply
	default:
		return false
	}
	spa, tpa := [4]byte(p[14:18]), [4]byte(p[24:28])
	// An all-zero sender is an RFC 5227 probe, which claims nothing yet.
	if spa != tpa || spa == [4]byte{} {
		return false
	}
	a.MAC = p[8:14]
	a.IP = netip.AddrFrom4(spa)
	return true
}

func decodeNA(a *Announcement, p []byte, ethSrc []byte) bool {
	if len(p) < ipv6HeaderLen+naLen || p[0]>>4 != 6 || p[6] != 58 {
		return false
	}
	icmp := p[ipv6HeaderLen:]
	// Trust the IPv6 length over the capture, which may carry padding.
	if n := int(binary.BigEndian.Uint16(p[4:6])); n < len(icmp) {
		icmp = icmp[:n]
	}
	if len(icmp) < naLen || icmp[0] != icmpv6NA || icmp[4]&naFlagSolicited != 0 {
		return false
	}
	a.Kind = UnsolicitedNA
	a.IP = netip.AddrFrom16([16]byte(icmp[8:24]))
	a.MAC = ethSrc
	for opts := icmp[naLen:]; len(opts) >= 2; {
		n := int(opts[1]) * 8
		if n == 0 || n > len(opts) {
			break // RFC 4861 says drop; the announcement itself still stands
		}
		if opts[0] == ndpOptTargetLLA && n >= 8 {
			a.MAC = opts[2:8]
			break
		}
		opts = opts[n:]
	}
	return true
}
