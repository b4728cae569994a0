//go:build linux

package linuxbr

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"time"

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
	all, err := NetlinkVLANTables()
	if err != nil {
		return nil, err
	}
	return all[ifindex], nil
}

// NetlinkVLANTables reads every bridge port's VLAN table, by ifindex, from
// one AF_BRIDGE RTM_GETLINK dump with RTEXT_FILTER_BRVLAN.
func NetlinkVLANTables() (map[int][]VLAN, error) {
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
	msgs, err := dump(c, netlink.Message{
		Header: netlink.Header{Type: unix.RTM_GETLINK, Flags: netlink.Request | netlink.Dump},
		Data:   append(ifinfomsg(unix.AF_BRIDGE, 0), attrs...),
	})
	if err != nil {
		return nil, fmt.Errorf("rtnetlink bridge VLAN dump: %v", err)
	}
	out := map[int][]VLAN{}
	for _, m := range msgs {
		idx, vlans, err := parseBridgeVLANs(m.Data)
		if err != nil {
			return nil, err
		}
		for _, v := range vlans {
			if !hasVLAN(out[idx], v.ID) {
				out[idx] = append(out[idx], v)
			}
		}
	}
	return out, nil
}

// dumpTries bounds the attempts at a dump that concurrent changes keep
// interrupting.
const dumpTries = 5

// errDumpInterrupted: every attempt at a dump was interrupted.
var errDumpInterrupted = errors.New("interrupted by concurrent changes on every attempt")

// dump runs a dump request and redoes it while the kernel flags a reply
// NLM_F_DUMP_INTR: the table changed mid-dump and entries may be missing
// from it (before 6.7, a link deleted mid-dump hid the next one).
func dump(c *netlink.Conn, req netlink.Message) ([]netlink.Message, error) {
	for try := 0; try < dumpTries; try++ {
		msgs, err := c.Execute(req)
		if err != nil {
			return nil, err
		}
		intr := false
		for _, m := range msgs {
			if m.Header.Flags&netlink.DumpInterrupted != 0 {
				intr = true
				break
			}
		}
		if !intr {
			return msgs, nil
		}
	}
	return nil, fmt.Errorf("%w (%d attempts)", errDumpInterrupted, dumpTries)
}

func hasVLAN(vlans []VLAN, id uint16) bool {
	for _, v := range vlans {
		if v.ID == id {
			return true
		}
	}
	return false
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
type nlFDB struct {
	c *netlink.Conn
}

func dialFDB() (fdbConn, error) {
	c, err := dialRoute()
	if err != nil {
		return nil, err
	}
	return &nlFDB{c: c}, nil
}

func (n *nlFDB) Close() error                  { return n.c.Close() }
func (n *nlFDB) setDeadline(t time.Time) error { return n.c.SetDeadline(t) }

// noFDBGet is set once the kernel has refused a single-entry FDB get:
// kernels before 4.20 (XenServer 8's dom0 runs 4.19) have no
// rtnl_fdb_get. What the kernel can do does not change while we run.
var noFDBGet atomic.Bool

func (n *nlFDB) lookup(bridge int, mac net.HardwareAddr, vlan uint16) (fdbEntry, bool, error) {
	if !noFDBGet.Load() {
		e, found, err := n.get(bridge, mac, vlan)
		if !errors.Is(err, unix.EOPNOTSUPP) {
			return e, found, err
		}
		noFDBGet.Store(true)
	}
	ents, err := n.dumpFDB()
	if err != nil {
		return fdbEntry{}, false, err
	}
	for _, e := range ents {
		if e.Master == bridge && e.VLAN == vlan && bytes.Equal(e.MAC, mac) {
			return e, true, nil
		}
	}
	return fdbEntry{}, false, nil
}

// get asks the bridge for its one entry for mac/vlan with a non-dump
// RTM_GETNEIGH (rtnl_fdb_get, then br_fdb_get: the lookup the bridge's
// forwarding does, costing the same whatever the size of the table).
// ENOENT means no entry.
func (n *nlFDB) get(bridge int, mac net.HardwareAddr, vlan uint16) (fdbEntry, bool, error) {
	data, err := fdbGetRequest(bridge, mac, vlan)
	if err != nil {
		return fdbEntry{}, false, err
	}
	msgs, err := n.c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_GETNEIGH, Flags: netlink.Request},
		Data:   data,
	})
	if errors.Is(err, unix.ENOENT) {
		return fdbEntry{}, false, nil
	}
	if err != nil {
		return fdbEntry{}, false, fmt.Errorf("rtnetlink FDB get: %w", netErr(err))
	}
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWNEIGH {
			continue
		}
		e, err := parseFDB(m.Data)
		if err != nil {
			return fdbEntry{}, false, err
		}
		if e.Master == 0 {
			e.Master = bridge
		}
		return e, true, nil
	}
	return fdbEntry{}, false, fmt.Errorf("rtnetlink FDB get: no entry in the kernel's reply")
}

func (n *nlFDB) dumpFDB() ([]fdbEntry, error) {
	nd := make([]byte, unix.SizeofNdMsg)
	nd[0] = unix.AF_BRIDGE
	msgs, err := dump(n.c, netlink.Message{
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
		out = append(out, e)
	}
	return out, nil
}

// port asks for the link with ifindex index. ENODEV means it is gone.
func (n *nlFDB) port(index int) (string, int, bool, error) {
	msgs, err := n.c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_GETLINK, Flags: netlink.Request},
		Data:   ifinfomsg(unix.AF_UNSPEC, index),
	})
	if errors.Is(err, unix.ENODEV) {
		return "", 0, false, nil
	}
	if err != nil {
		return "", 0, false, fmt.Errorf("rtnetlink get link %d: %w", index, netErr(err))
	}
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWLINK {
			continue
		}
		idx, name, master, err := parseLinkMaster(m.Data)
		if err != nil {
			return "", 0, false, err
		}
		if idx == index {
			return name, master, true, nil
		}
	}
	return "", 0, false, nil
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
