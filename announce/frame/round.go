package frame

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"github.com/selfannounce/selfannounce/announce"
)

// Offsets into an untagged frame; a tag shifts everything after the source
// MAC by tagLen.
const (
	offSrcMAC    = 6
	offEtherType = 12
	offARPSHA    = 22
	offARPSPA    = 28
	offARPTHA    = 32
	offARPTPA    = 38
	offIPv6Src   = 22
	offIPv6Dst   = 38
	offICMP      = 54
	offICMPSum   = 56
	offNATarget  = 62
	offNALLA     = 80
)

// Templates are the reference builders' own output for a placeholder guest,
// so the fast path inherits their layout rather than restating it.
var tmplRARP, tmplGARP, tmplNA = mustTemplates()

func mustTemplates() (rarp, garp, na []byte) {
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	var err error
	if rarp, err = RARP(mac, 0); err != nil {
		panic(err)
	}
	if garp, err = GARP(mac, netip.MustParseAddr("192.0.2.1"), 0); err != nil {
		panic(err)
	}
	if na, err = NA(mac, netip.MustParseAddr("2001:db8::1"), 0); err != nil {
		panic(err)
	}
	return rarp, garp, na
}

// Round builds one round of the QEMU schedule for g: the RARP, then a GARP
// per IPv4 address, then an NA per IPv6 address, each family in g.IPs order.
func Round(g announce.Guest, vlan uint16) ([]Frame, error) {
	return AppendRound(make([]Frame, 0, 1+len(g.IPs)), g, vlan)
}

// AppendRound is Round appending to dst, so a caller can reuse its slice.
// All frames of the round share one allocation; each Data is capped at its
// own length so appending to one cannot overwrite the next.
func AppendRound(dst []Frame, g announce.Guest, vlan uint16) ([]Frame, error) {
	if err := checkMAC(g.MAC); err != nil {
		return dst, err
	}
	if err := checkVLAN(vlan); err != nil {
		return dst, err
	}
	tag := 0
	if vlan != 0 {
		tag = tagLen
	}
	size := len(tmplRARP) + tag
	for _, ip := range g.IPs {
		ip = ip.Unmap()
		if err := checkIP(ip, ip.Is4(), "round"); err != nil {
			return dst, err
		}
		if ip.Is4() {
			size += len(tmplGARP) + tag
		} else {
			size += len(tmplNA) + tag
		}
	}
	buf := make([]byte, 0, size)

	var f []byte
	buf, f = appendTemplate(buf, tmplRARP, vlan)
	copy(f[offARPSHA+tag:], g.MAC)
	copy(f[offARPTHA+tag:], g.MAC)
	copy(f[offSrcMAC:], g.MAC)
	dst = append(dst, Frame{Kind: KindRARP, Data: f})

	for _, ip := range g.IPs {
		if ip = ip.Unmap(); !ip.Is4() {
			continue
		}
		buf, f = appendTemplate(buf, tmplGARP, vlan)
		a := ip.As4()
		copy(f[offSrcMAC:], g.MAC)
		copy(f[offARPSHA+tag:], g.MAC)
		copy(f[offARPSPA+tag:], a[:])
		copy(f[offARPTPA+tag:], a[:])
		dst = append(dst, Frame{Kind: KindGARP, IP: ip, Data: f})
	}
	for _, ip := range g.IPs {
		if ip = ip.Unmap(); !ip.Is6() {
			continue
		}
		ip = ip.WithZone("")
		buf, f = appendTemplate(buf, tmplNA, vlan)
		a := ip.As16()
		copy(f[offSrcMAC:], g.MAC)
		copy(f[offIPv6Src+tag:], a[:])
		copy(f[offNATarget+tag:], a[:])
		copy(f[offNALLA+tag:], g.MAC)
		icmp := f[offICMP+tag:]
		binary.BigEndian.PutUint16(f[offICMPSum+tag:], 0)
		binary.BigEndian.PutUint16(f[offICMPSum+tag:], icmpv6Checksum(f[offIPv6Src+tag:offIPv6Dst+tag+16], icmp))
		dst = append(dst, Frame{Kind: KindNA, IP: ip, Data: f})
	}
	if len(buf) != size {
		panic(fmt.Sprintf("frame: round sized %d bytes but built %d", size, len(buf)))
	}
	return dst, nil
}

// appendTemplate appends tmpl to buf, tagged with vlan when it is non-zero,
// and returns the new frame as its own capped slice.
func appendTemplate(buf, tmpl []byte, vlan uint16) (out, frame []byte) {
	start := len(buf)
	if vlan == 0 {
		buf = append(buf, tmpl...)
	} else {
		buf = append(buf, tmpl[:offEtherType]...)
		buf = append(buf, 0x81, 0x00, byte(vlan>>8), byte(vlan))
		buf = append(buf, tmpl[offEtherType:]...)
	}
	return buf, buf[start:len(buf):len(buf)]
}

// icmpv6Checksum is RFC 4443's checksum over the IPv6 pseudo-header (addrs
// holds source then destination) and msg, whose checksum field is zero.
func icmpv6Checksum(addrs, msg []byte) uint16 {
	sum := uint32(len(msg)) + 58
	for i := 0; i+1 < len(addrs); i += 2 {
		sum += uint32(addrs[i])<<8 | uint32(addrs[i+1])
	}
	for i := 0; i+1 < len(msg); i += 2 {
		sum += uint32(msg[i])<<8 | uint32(msg[i+1])
	}
	if len(msg)%2 == 1 {
		sum += uint32(msg[len(msg)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
