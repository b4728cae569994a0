//go:build linux

package resolve

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path"
)

type systemHostAddrs struct {
	vmPortGlobs []string
}

// SystemHostAddrs lists, over rtnetlink (Go's net package dumps links and
// addresses with RTM_GETLINK/RTM_GETADDR), the MAC of every interface in
// the calling thread's network namespace except VM ports (their MACs are
// fe:ff:ff:ff:ff:ff or derived from the guest's, and stand for the guest),
// and every address on any interface.
func SystemHostAddrs(vmPortGlobs []string) (HostAddrs, error) {
	for _, g := range vmPortGlobs {
		if _, err := path.Match(g, ""); err != nil {
			return nil, fmt.Errorf("VM port pattern %q: %v", g, err)
		}
	}
	return systemHostAddrs{append([]string(nil), vmPortGlobs...)}, nil
}

func (s systemHostAddrs) Owned(context.Context) ([]net.HardwareAddr, []netip.Addr, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, nil, err
	}
	var macs []net.HardwareAddr
	for _, ifc := range ifs {
		if len(ifc.HardwareAddr) != 6 || vmPort(s.vmPortGlobs, ifc.Name) || isZeroMAC(ifc.HardwareAddr) {
			continue
		}
		macs = append(macs, ifc.HardwareAddr)
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, nil, err
	}
	var ips []netip.Addr
	for _, a := range addrs {
		var ip net.IP
		switch v := a.(type) {
		case *net.IPNet:
			ip = v.IP
		case *net.IPAddr:
			ip = v.IP
		}
		if addr, ok := netip.AddrFromSlice(ip); ok {
			ips = append(ips, addr.Unmap())
		}
	}
	return macs, ips, nil
}

func isZeroMAC(m net.HardwareAddr) bool {
	for _, b := range m {
		if b != 0 {
			return false
		}
	}
	return true
}
