//go:build linux

package resolve

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
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

func (s systemHostAddrs) Owned(ctx context.Context) ([]net.HardwareAddr, []netip.Addr, error) {
	ifs, err := linkMACs()
	if err != nil {
		return nil, nil, err
	}
	var macs []net.HardwareAddr
	for _, ifc := range ifs {
		if len(ifc.mac) != 6 || vmPort(s.vmPortGlobs, ifc.name) || isZeroMAC(ifc.mac) {
			continue
		}
		macs = append(macs, ifc.mac)
	}
	ips, err := SystemHostIPs(ctx)
	if err != nil {
		return nil, nil, err
	}
	return macs, ips, nil
}

type linkMAC struct {
	name string
	mac  net.HardwareAddr
}

// rtextFilterSkipStats is RTEXT_FILTER_SKIP_STATS, missing from x/sys/unix.
const rtextFilterSkipStats = 1 << 3

// linkMACs dumps every link's name and MAC without their statistics. Not
// net.Interfaces: the kernel gathers every device's counters for it (a veth
// sums its per-CPU ones), 3 ms with 200 ports and 22 ms with 1000 on every
// arrival (measured by cmd/selfannounce-bench); without them the dump costs
// a few percent of that.
func linkMACs() ([]linkMAC, error) {
	c, err := netlink.Dial(unix.NETLINK_ROUTE, nil)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(unix.IFLA_EXT_MASK, rtextFilterSkipStats)
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_GETLINK, Flags: netlink.Request | netlink.Dump},
		Data:   append(make([]byte, unix.SizeofIfInfomsg), attrs...),
	})
	if err != nil {
		return nil, fmt.Errorf("rtnetlink link dump: %w", err)
	}
	out := make([]linkMAC, 0, len(msgs))
	for _, m := range msgs {
		if len(m.Data) < unix.SizeofIfInfomsg {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[unix.SizeofIfInfomsg:])
		if err != nil {
			return nil, err
		}
		var l linkMAC
		for ad.Next() {
			switch ad.Type() {
			case unix.IFLA_IFNAME:
				l.name = ad.String()
			case unix.IFLA_ADDRESS:
				l.mac = net.HardwareAddr(ad.Bytes())
			}
		}
		if err := ad.Err(); err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, nil
}

func isZeroMAC(m net.HardwareAddr) bool {
	for _, b := range m {
		if b != 0 {
			return false
		}
	}
	return true
}

// SystemHostIPs lists every address on every interface of the calling
// thread's network namespace with one RTM_GETADDR dump. Unlike
// net.InterfaceAddrs, it does not dump the links as well: the daemon knows
// them already, and at hundreds of ports the link dump cost milliseconds per
// arrival where the address dump costs tens of microseconds.
func SystemHostIPs(ctx context.Context) ([]netip.Addr, error) {
	c, err := netlink.Dial(unix.NETLINK_ROUTE, nil)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return dumpAddrs(ctx, c)
}

// HostIPLister lists the host's addresses as SystemHostIPs does, over one
// rtnetlink socket kept between calls: the daemon asks on every arrival, and
// opening and closing a socket cost more than the dump. The socket belongs
// to the network namespace of the thread that first lists; after an error
// the next call opens a fresh one. Safe for concurrent use.
type HostIPLister struct {
	mu sync.Mutex
	c  *netlink.Conn
}

// List dumps the addresses now; nothing is remembered between calls.
func (h *HostIPLister) List(ctx context.Context) ([]netip.Addr, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.c == nil {
		c, err := netlink.Dial(unix.NETLINK_ROUTE, nil)
		if err != nil {
			return nil, err
		}
		h.c = c
	}
	ips, err := dumpAddrs(ctx, h.c)
	// A deadline left set arms a runtime timer that would wake the idle
	// daemon when it expires.
	if err == nil {
		err = h.c.SetDeadline(time.Time{})
	}
	if err != nil {
		// A reply cut short by the deadline may still be queued.
		h.c.Close()
		h.c = nil
		return nil, err
	}
	return ips, nil
}

// Close releases the socket.
func (h *HostIPLister) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.c == nil {
		return nil
	}
	err := h.c.Close()
	h.c = nil
	return err
}

func dumpAddrs(ctx context.Context, c *netlink.Conn) ([]netip.Addr, error) {
	d, _ := ctx.Deadline() // zero: none
	if err := c.SetDeadline(d); err != nil {
		return nil, err
	}
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_GETADDR, Flags: netlink.Request | netlink.Dump},
		Data:   make([]byte, unix.SizeofIfAddrmsg),
	})
	if err != nil {
		return nil, fmt.Errorf("rtnetlink address dump: %w", err)
	}
	ips := make([]netip.Addr, 0, len(msgs))
	for _, m := range msgs {
		ip, ok, err := parseIfaddr(m.Data)
		if err != nil {
			return nil, err
		}
		if ok {
			ips = append(ips, ip)
		}
	}
	return ips, nil
}

// parseIfaddr reads an RTM_NEWADDR message's own address: IFA_LOCAL when
// present (on a point-to-point link IFA_ADDRESS is the peer's), else
// IFA_ADDRESS, as net.InterfaceAddrs does.
func parseIfaddr(b []byte) (netip.Addr, bool, error) {
	if len(b) < unix.SizeofIfAddrmsg {
		return netip.Addr{}, false, fmt.Errorf("address message is %d bytes, shorter than ifaddrmsg", len(b))
	}
	ad, err := netlink.NewAttributeDecoder(b[unix.SizeofIfAddrmsg:])
	if err != nil {
		return netip.Addr{}, false, err
	}
	var local, addr []byte
	for ad.Next() {
		switch ad.Type() {
		case unix.IFA_LOCAL:
			local = ad.Bytes()
		case unix.IFA_ADDRESS:
			addr = ad.Bytes()
		}
	}
	if err := ad.Err(); err != nil {
		return netip.Addr{}, false, err
	}
	if local != nil {
		addr = local
	}
	ip, ok := netip.AddrFromSlice(addr)
	return ip.Unmap(), ok, nil
}
