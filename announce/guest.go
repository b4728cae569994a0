// Package announce holds the types shared by selfannounce's sub-packages.
// The sub-packages do the work: frame builds the frames, schedule times them,
// linuxbr finds the path out of a Linux-bridge host, send writes frames, and
// the daemon ties them to the kernel's events.
package announce

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Guest is what the network must learn about a VM: its MAC and the addresses
// that should follow it.
type Guest struct {
	MAC net.HardwareAddr
	IPs []netip.Addr
	// Source names the resolver that supplied the identity ("config",
	// "xenstore", "libvirt", "frame", "cli"), for logs and metrics.
	Source string
}

func (g Guest) String() string {
	ips := make([]string, len(g.IPs))
	for i, ip := range g.IPs {
		ips[i] = ip.String()
	}
	return fmt.Sprintf("%s [%s]", g.MAC, strings.Join(ips, " "))
}

// XenVifMAC is the MAC Xen gives every netback vif; it is never a guest's.
var XenVifMAC = net.HardwareAddr{0xfe, 0xff, 0xff, 0xff, 0xff, 0xff}

// ParseMAC accepts only 48-bit unicast MACs: a guest cannot own a multicast
// or zero address, and announcing one would poison every switch on the path.
func ParseMAC(s string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(s)
	if err != nil {
		return nil, fmt.Errorf("malformed MAC %q", s)
	}
	if err := CheckGuestMAC(mac); err != nil {
		return nil, fmt.Errorf("MAC %q: %v", s, err)
	}
	return mac, nil
}

// CheckGuestMAC rejects MACs a guest can never own.
func CheckGuestMAC(mac net.HardwareAddr) error {
	switch {
	case len(mac) != 6:
		return fmt.Errorf("not a 48-bit Ethernet address")
	case mac[0]&1 == 1:
		return fmt.Errorf("multicast address")
	case isZero(mac):
		return fmt.Errorf("all-zero address")
	case mac.String() == XenVifMAC.String():
		return fmt.Errorf("fe:ff:ff:ff:ff:ff is Xen's vif MAC, not a guest's")
	}
	return nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// ParseIP accepts unicast IPv4 and IPv6 addresses a guest could hold.
func ParseIP(s string) (netip.Addr, error) {
	ip, err := netip.ParseAddr(s)
	if err != nil || ip.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("malformed IP address %q", s)
	}
	ip = ip.Unmap()
	if !AnnounceableIP(ip) {
		return netip.Addr{}, fmt.Errorf("IP address %q cannot be announced for a guest (not unicast)", s)
	}
	return ip, nil
}

// AnnounceableIP reports whether ip is an address a guest can be announced
// for. Multicast, loopback, unspecified and broadcast addresses never are.
func AnnounceableIP(ip netip.Addr) bool {
	if !ip.IsValid() || ip.IsUnspecified() || ip.IsLoopback() || ip.IsMulticast() {
		return false
	}
	if ip.Is4() && ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return false
	}
	return true
}

// StaticGuest is an identity an operator configured for ports matching Port
// (a name or shell glob).
type StaticGuest struct {
	Port string
	Guest
}
