//go:build linux

package linuxbr

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// NewHost returns the Linux Host: links from sysfs under sysRoot ("" means
// "/sys"), the bridge VLAN table and untyped link kinds from rtnetlink.
// sysfs shows the network namespace it was mounted in, netlink the one of
// the calling thread; on a live host both are the root namespace.
func NewHost(sysRoot string) Host {
	if sysRoot == "" {
		sysRoot = "/sys"
	}
	return &SysfsHost{Root: sysRoot, VLANTable: NetlinkVLANTable, LinkKind: netlinkKind}
}

func dialRoute() (*netlink.Conn, error) {
	c, err := netlink.Dial(unix.NETLINK_ROUTE, nil)
	if err != nil {
		return nil, fmt.Errorf("rtnetlink: %v", err)
	}
	return c, nil
}

// NetlinkVLANTable reads the port's VLAN table from an AF_BRIDGE
// RTM_GETLINK dump with RTEXT_FILTER_BRVLAN, the only place the kernel
// publishes it. A port absent from the dump has no VLANs.
func NetlinkVLANTable(ifindex int) ([]VLAN, error) {
	c, err := dialRoute()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(unix.IFLA_EXT_MASK, rtextFilterBRVLAN)
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_GETLINK, Flags: netlink.Request | netlink.Dump},
		Data:   append(ifinfomsg(unix.AF_BRIDGE, 0), attrs...),
	})
	if err != nil {
		return nil, fmt.Errorf("rtnetlink bridge VLAN dump: %v", err)
	}
	var out []VLAN
	seen := map[uint16]bool{}
	for _, m := range msgs {
		idx, vlans, err := parseBridgeVLANs(m.Data)
		if err != nil {
			return nil, err
		}
		if idx != ifindex {
			continue
		}
		for _, v := range vlans {
			if !seen[v.ID] {
				seen[v.ID] = true
				out = append(out, v)
			}
		}
	}
	return out, nil
}

func netlinkKind(ifindex int) (string, error) {
	c, err := dialRoute()
	if err != nil {
		return "", err
	}
	defer c.Close()
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_GETLINK, Flags: netlink.Request},
		Data:   ifinfomsg(unix.AF_UNSPEC, ifindex),
	})
	if err != nil {
		return "", fmt.Errorf("rtnetlink get link %d: %v", ifindex, err)
	}
	for _, m := range msgs {
		if _, _, _, kind, err := parseLink(m.Data); err == nil {
			return kind, nil
		}
	}
	return "", nil
}

// nlFDB is fdbOps over one rtnetlink socket.
type nlFDB struct{ c *netlink.Conn }

func dialFDB(ctx context.Context) (*nlFDB, error) {
	c, err := dialRoute()
	if err != nil {
		return nil, err
	}
	if d, ok := ctx.Deadline(); ok {
		if err := c.SetDeadline(d); err != nil {
			c.Close()
			return nil, err
		}
	}
	return &nlFDB{c: c}, nil
}

func (n *nlFDB) Close() error { return n.c.Close() }

func (n *nlFDB) entries(bridge int) ([]fdbEntry, error) {
	nd := make([]byte, unix.SizeofNdMsg)
	nd[0] = unix.AF_BRIDGE
	msgs, err := n.c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_GETNEIGH, Flags: netlink.Request | netlink.Dump},
		Data:   nd,
	})
	if err != nil {
		return nil, fmt.Errorf("rtnetlink FDB dump: %v", netErr(err))
	}
	var out []fdbEntry
	for _, m := range msgs {
		e, err := parseFDB(m.Data)
		if err != nil {
			return nil, err
		}
		if e.Master == bridge {
			out = append(out, e)
		}
	}
	return out, nil
}

func (n *nlFDB) links() ([]Link, error) {
	// Statistics are most of each message, and a host receiving a wave of
	// migrations dumps its links once per guest.
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(unix.IFLA_EXT_MASK, rtextFilterSkipStats)
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	msgs, err := n.c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_GETLINK, Flags: netlink.Request | netlink.Dump},
		Data:   append(ifinfomsg(unix.AF_UNSPEC, 0), attrs...),
	})
	if err != nil {
		return nil, fmt.Errorf("rtnetlink link dump: %v", netErr(err))
	}
	var out []Link
	for _, m := range msgs {
		idx, name, mac, _, err := parseLink(m.Data)
		if err != nil {
			return nil, err
		}
		out = append(out, Link{Name: name, Index: idx, MAC: mac})
	}
	return out, nil
}

func (n *nlFDB) move(port int, mac net.HardwareAddr, vlan uint16) error {
	data, err := fdbRequest(port, mac, vlan, unix.NUD_REACHABLE)
	if err != nil {
		return err
	}
	_, err = n.c.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  unix.RTM_NEWNEIGH,
			Flags: netlink.Request | netlink.Acknowledge | netlink.Create | netlink.Replace,
		},
		Data: data,
	})
	return netErr(err)
}

func (n *nlFDB) remove(e fdbEntry) error {
	data, err := fdbRequest(e.Port, e.MAC, e.VLAN, 0)
	if err != nil {
		return err
	}
	_, err = n.c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_DELNEIGH, Flags: netlink.Request | netlink.Acknowledge},
		Data:   data,
	})
	if errors.Is(err, unix.ENOENT) {
		return nil // aged out meanwhile
	}
	return netErr(err)
}

// netErr turns a timeout into one that says the deadline passed.
func netErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w (%v)", context.DeadlineExceeded, err)
	}
	return err
}
