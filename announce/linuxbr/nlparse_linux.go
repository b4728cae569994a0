//go:build linux

package linuxbr

import (
	"encoding/binary"
	"fmt"
	"net"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Bridge netlink constants from <linux/if_bridge.h> and <linux/rtnetlink.h>
// that golang.org/x/sys/unix does not carry.
const (
	rtextFilterBRVLAN    = 1 << 1 // RTEXT_FILTER_BRVLAN
	rtextFilterSkipStats = 1 << 3 // RTEXT_FILTER_SKIP_STATS

	iflaBridgeVLANInfo = 2 // IFLA_BRIDGE_VLAN_INFO

	bridgeVLANInfoPVID       = 1 << 1 // BRIDGE_VLAN_INFO_PVID
	bridgeVLANInfoUntagged   = 1 << 2 // BRIDGE_VLAN_INFO_UNTAGGED
	bridgeVLANInfoRangeBegin = 1 << 3 // BRIDGE_VLAN_INFO_RANGE_BEGIN
	bridgeVLANInfoRangeEnd   = 1 << 4 // BRIDGE_VLAN_INFO_RANGE_END
)

var ne = binary.NativeEndian

// ifinfomsg returns a struct ifinfomsg for family and index.
func ifinfomsg(family uint8, index int) []byte {
	b := make([]byte, unix.SizeofIfInfomsg)
	b[0] = family
	ne.PutUint32(b[4:8], uint32(int32(index)))
	return b
}

// parseBridgeVLANs decodes one RTM_NEWLINK message of an AF_BRIDGE dump
// (struct ifinfomsg, then attributes) into the link's index and its VLAN
// table from IFLA_AF_SPEC / IFLA_BRIDGE_VLAN_INFO.
func parseBridgeVLANs(data []byte) (int, []VLAN, error) {
	if len(data) < unix.SizeofIfInfomsg {
		return 0, nil, fmt.Errorf("bridge link message is %d bytes, shorter than ifinfomsg", len(data))
	}
	index := int(int32(ne.Uint32(data[4:8])))
	ad, err := netlink.NewAttributeDecoder(data[unix.SizeofIfInfomsg:])
	if err != nil {
		return 0, nil, fmt.Errorf("bridge link message of ifindex %d: %v", index, err)
	}
	var vlans []VLAN
	for ad.Next() {
		if ad.Type() != unix.IFLA_AF_SPEC {
			continue
		}
		ad.Nested(func(nad *netlink.AttributeDecoder) error {
			var rangeStart *VLAN
			for nad.Next() {
				if nad.Type() != iflaBridgeVLANInfo {
					continue
				}
				b := nad.Bytes()
				if len(b) != 4 {
					return fmt.Errorf("IFLA_BRIDGE_VLAN_INFO is %d bytes, want 4", len(b))
				}
				flags, vid := ne.Uint16(b[0:2]), ne.Uint16(b[2:4])
				if vid == 0 || vid > 4094 {
					return fmt.Errorf("IFLA_BRIDGE_VLAN_INFO has VLAN id %d", vid)
				}
				v := VLAN{ID: vid, PVID: flags&bridgeVLANInfoPVID != 0, Untagged: flags&bridgeVLANInfoUntagged != 0}
				switch {
				case flags&bridgeVLANInfoRangeBegin != 0:
					rangeStart = &v
				case flags&bridgeVLANInfoRangeEnd != 0:
					if rangeStart == nil || rangeStart.ID > vid {
						return fmt.Errorf("IFLA_BRIDGE_VLAN_INFO range ends at %d without a start", vid)
					}
					// A range never holds the PVID: the kernel reports it alone.
					for id := rangeStart.ID; id <= vid; id++ {
						vlans = append(vlans, VLAN{ID: id, Untagged: rangeStart.Untagged})
					}
					rangeStart = nil
				default:
					vlans = append(vlans, v)
				}
			}
			if rangeStart != nil {
				return fmt.Errorf("IFLA_BRIDGE_VLAN_INFO range from %d never ends", rangeStart.ID)
			}
			return nil
		})
	}
	if err := ad.Err(); err != nil {
		return 0, nil, fmt.Errorf("bridge link message of ifindex %d: %v", index, err)
	}
	return index, vlans, nil
}

// parseLink decodes an RTM_NEWLINK message into its index, name, hardware
// address and IFLA_INFO_KIND.
func parseLink(data []byte) (index int, name string, mac net.HardwareAddr, kind string, err error) {
	if len(data) < unix.SizeofIfInfomsg {
		return 0, "", nil, "", fmt.Errorf("link message is %d bytes, shorter than ifinfomsg", len(data))
	}
	index = int(int32(ne.Uint32(data[4:8])))
	ad, err := netlink.NewAttributeDecoder(data[unix.SizeofIfInfomsg:])
	if err != nil {
		return 0, "", nil, "", err
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.IFLA_IFNAME:
			name = ad.String()
		case unix.IFLA_ADDRESS:
			mac = net.HardwareAddr(ad.Bytes())
		case unix.IFLA_LINKINFO:
			ad.Nested(func(nad *netlink.AttributeDecoder) error {
				for nad.Next() {
					if nad.Type() == unix.IFLA_INFO_KIND {
						kind = nad.String()
					}
				}
				return nil
			})
		}
	}
	return index, name, mac, kind, ad.Err()
}

// parseLinkMaster decodes an RTM_NEWLINK message into its index, name and
// IFLA_MASTER (0 when it has none).
func parseLinkMaster(data []byte) (index int, name string, master int, err error) {
	if len(data) < unix.SizeofIfInfomsg {
		return 0, "", 0, fmt.Errorf("link message is %d bytes, shorter than ifinfomsg", len(data))
	}
	index = int(int32(ne.Uint32(data[4:8])))
	ad, err := netlink.NewAttributeDecoder(data[unix.SizeofIfInfomsg:])
	if err != nil {
		return 0, "", 0, err
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.IFLA_IFNAME:
			name = ad.String()
		case unix.IFLA_MASTER:
			master = int(ad.Uint32())
		}
	}
	return index, name, master, ad.Err()
}

// parseFDB decodes one RTM_NEWNEIGH message of an AF_BRIDGE dump.
func parseFDB(data []byte) (fdbEntry, error) {
	if len(data) < unix.SizeofNdMsg {
		return fdbEntry{}, fmt.Errorf("neighbour message is %d bytes, shorter than ndmsg", len(data))
	}
	e := fdbEntry{
		Port:  int(int32(ne.Uint32(data[4:8]))),
		State: ne.Uint16(data[8:10]),
		Flags: data[10],
	}
	ad, err := netlink.NewAttributeDecoder(data[unix.SizeofNdMsg:])
	if err != nil {
		return fdbEntry{}, err
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.NDA_LLADDR:
			e.MAC = net.HardwareAddr(ad.Bytes())
		case unix.NDA_VLAN:
			e.VLAN = ad.Uint16()
		case unix.NDA_MASTER:
			e.Master = int(ad.Uint32())
		}
	}
	return e, ad.Err()
}

// fdbRequest encodes the ndmsg and attributes of an RTM_NEWNEIGH or
// RTM_DELNEIGH for the bridge (NTF_MASTER) entry mac/vlan on port.
func fdbRequest(port int, mac net.HardwareAddr, vlan uint16, state uint16) ([]byte, error) {
	b := make([]byte, unix.SizeofNdMsg)
	b[0] = unix.AF_BRIDGE
	ne.PutUint32(b[4:8], uint32(int32(port)))
	ne.PutUint16(b[8:10], state)
	b[10] = unix.NTF_MASTER
	ae := netlink.NewAttributeEncoder()
	ae.Bytes(unix.NDA_LLADDR, mac)
	if vlan != 0 {
		ae.Uint16(unix.NDA_VLAN, vlan)
	}
	a, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	return append(b, a...), nil
}

// fdbGetRequest encodes the ndmsg and attributes of a non-dump RTM_GETNEIGH
// asking bridge for its entry mac/vlan. rtnl_fdb_get validates strictly:
// ndm_ifindex, state, type and padding zero (a port index and NDA_MASTER
// exclude each other), flags only NTF_MASTER/NTF_SELF.
func fdbGetRequest(bridge int, mac net.HardwareAddr, vlan uint16) ([]byte, error) {
	b := make([]byte, unix.SizeofNdMsg)
	b[0] = unix.AF_BRIDGE
	b[10] = unix.NTF_MASTER
	ae := netlink.NewAttributeEncoder()
	ae.Bytes(unix.NDA_LLADDR, mac)
	ae.Uint32(unix.NDA_MASTER, uint32(bridge))
	if vlan != 0 {
		ae.Uint16(unix.NDA_VLAN, vlan)
	}
	a, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	return append(b, a...), nil
}
