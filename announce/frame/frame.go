// Package frame builds the frames that announce a guest on the wire: QEMU's
// RARP, a gratuitous ARP per IPv4 address and an unsolicited neighbour
// advertisement per IPv6 address, each optionally 802.1Q-tagged because a
// frame written on a bridge port bypasses the bridge's own tagging.
//
// RARP, GARP and NA build one frame through mdlayher's ethernet, arp and ndp
// packages. Round and AppendRound, which the daemon calls on every migration,
// patch copies of those same frames instead of marshalling afresh; the tests
// hold the two paths byte-identical.
package frame

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"

	"github.com/selfannounce/selfannounce/announce"
)

// RARP EtherTypes. QEMU switched from the legacy value in 2009; receivers
// may still see it from very old device models.
const (
	EtherTypeRARP       = 0x8035
	EtherTypeRARPLegacy = 0x0835
)

// Kind says which announcement a Frame carries.
type Kind uint8

// Kinds of announcement. The zero Kind is deliberately invalid.
const (
	KindRARP Kind = iota + 1
	KindGARP
	KindNA
)

func (k Kind) String() string {
	switch k {
	case KindRARP:
		return "rarp"
	case KindGARP:
		return "garp"
	case KindNA:
		return "na"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Frame is one announcement ready for a packet socket.
type Frame struct {
	Kind Kind
	// IP is the address announced; invalid for RARP.
	IP   netip.Addr
	Data []byte
}

const (
	// rarpOpRequestReverse is RFC 903's "request reverse", what QEMU sends.
	rarpOpRequestReverse arp.Operation = 3
	maxVLAN                            = 4094
	tagLen                             = 4
	ipv6HeaderLen                      = 40
	// hopLimitNDP is required: receivers drop NDP from further away.
	hopLimitNDP = 255
)

var (
	ipv4Zero    = netip.AddrFrom4([4]byte{})
	allNodes    = netip.MustParseAddr("ff02::1")
	allNodesMAC = net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}
	zeroMAC     = net.HardwareAddr{0, 0, 0, 0, 0, 0}
)

// RARP builds the frame QEMU's announce-self sends: a reverse request in
// which the guest asks about itself, which no RARP server answers but every
// switch learns from.
func RARP(mac net.HardwareAddr, vlan uint16) ([]byte, error) {
	if err := checkMAC(mac); err != nil {
		return nil, err
	}
	p := &arp.Packet{
		HardwareType:       1,
		ProtocolType:       uint16(ethernet.EtherTypeIPv4),
		HardwareAddrLength: 6,
		IPLength:           4,
		Operation:          rarpOpRequestReverse,
		SenderHardwareAddr: mac,
		SenderIP:           ipv4Zero,
		TargetHardwareAddr: mac,
		TargetIP:           ipv4Zero,
	}
	payload, err := p.MarshalBinary()
	if err != nil {
		return nil, err
	}
	return marshalEthernet(ethernet.Broadcast, mac, EtherTypeRARP, vlan, payload)
}

// GARP builds the gratuitous ARP Linux sends for arp_notify and arping -U: a
// request for the address itself, so hosts holding a stale entry update it
// without anybody replying.
func GARP(mac net.HardwareAddr, ip netip.Addr, vlan uint16) ([]byte, error) {
	if err := checkMAC(mac); err != nil {
		return nil, err
	}
	if err := checkIP(ip, true, "GARP"); err != nil {
		return nil, err
	}
	p, err := arp.NewPacket(arp.OperationRequest, mac, ip, zeroMAC, ip)
	if err != nil {
		return nil, fmt.Errorf("frame: GARP for %s: %v", ip, err)
	}
	payload, err := p.MarshalBinary()
	if err != nil {
		return nil, err
	}
	return marshalEthernet(ethernet.Broadcast, mac, uint16(ethernet.EtherTypeARP), vlan, payload)
}

// NA builds an unsolicited neighbour advertisement from the address itself
// to all nodes, with Override set so neighbours replace cached entries.
func NA(mac net.HardwareAddr, ip netip.Addr, vlan uint16) ([]byte, error) {
	if err := checkMAC(mac); err != nil {
		return nil, err
	}
	if err := checkIP(ip, false, "NA"); err != nil {
		return nil, err
	}
	ip = ip.WithZone("")
	m := &ndp.NeighborAdvertisement{
		Override:      true,
		TargetAddress: ip,
		Options: []ndp.Option{&ndp.LinkLayerAddress{
			Direction: ndp.Target,
			Addr:      mac,
		}},
	}
	icmp, err := ndp.MarshalMessageChecksum(m, ip, allNodes)
	if err != nil {
		return nil, fmt.Errorf("frame: NA for %s: %v", ip, err)
	}
	payload := make([]byte, ipv6HeaderLen+len(icmp))
	payload[0] = 6 << 4
	payload[4], payload[5] = byte(len(icmp)>>8), byte(len(icmp))
	payload[6] = 58 // ICMPv6
	payload[7] = hopLimitNDP
	src, dst := ip.As16(), allNodes.As16()
	copy(payload[8:24], src[:])
	copy(payload[24:40], dst[:])
	copy(payload[ipv6HeaderLen:], icmp)
	return marshalEthernet(allNodesMAC, mac, uint16(ethernet.EtherTypeIPv6), vlan, payload)
}

func marshalEthernet(dst, src net.HardwareAddr, et uint16, vlan uint16, payload []byte) ([]byte, error) {
	if err := checkVLAN(vlan); err != nil {
		return nil, err
	}
	f := &ethernet.Frame{
		Destination: dst,
		Source:      src,
		EtherType:   ethernet.EtherType(et),
		Payload:     payload,
	}
	if vlan != 0 {
		f.VLAN = &ethernet.VLAN{ID: vlan}
	}
	return f.MarshalBinary()
}

func checkMAC(mac net.HardwareAddr) error {
	if err := announce.CheckGuestMAC(mac); err != nil {
		return fmt.Errorf("frame: MAC %s: %v", mac, err)
	}
	return nil
}

func checkVLAN(vlan uint16) error {
	if vlan > maxVLAN {
		return fmt.Errorf("frame: VLAN %d out of range 1-%d (0 = untagged)", vlan, maxVLAN)
	}
	return nil
}

func checkIP(ip netip.Addr, v4 bool, what string) error {
	switch {
	case !ip.IsValid():
		return fmt.Errorf("frame: %s needs an IP address, got none", what)
	case v4 && !ip.Is4():
		return fmt.Errorf("frame: %s needs an IPv4 address, got %s", what, ip)
	case !v4 && (!ip.Is6() || ip.Is4In6()):
		return fmt.Errorf("frame: %s needs an IPv6 address, got %s", what, ip)
	case !announce.AnnounceableIP(ip):
		return fmt.Errorf("frame: %s cannot be announced for a guest (not unicast)", ip)
	}
	return nil
}
