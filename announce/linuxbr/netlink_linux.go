//go:build linux

package linuxbr

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
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
type nlFDB struct {
	c      *netlink.Conn
	netns  uint64 // 0: unknown, nothing is cached
	bridge int    // of the last entries call, for patching the cache
}

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
	n := &nlFDB{c: c}
	var st unix.Stat_t
	if unix.Stat("/proc/thread-self/ns/net", &st) == nil {
		n.netns = st.Ino
	}
	return n, nil
}

func (n *nlFDB) Close() error { return n.c.Close() }

// fdbCache shares one forwarding-database dump between the repairs of a
// wave of arrivals. The dump grows with every port of every bridge (a 200-vif
// bridge has 600 entries) and was the costliest step of a repair: 200
// guests arriving at once pushed the last first frames 500 ms late. Each
// repair only looks at its own guest's MAC, and the cache is patched with
// every change made through it, so what it can miss is an entry the kernel
// learned in the last fdbCacheTTL: the same race a fresh dump has with
// learning, stretched from a millisecond to fdbCacheTTL.
var fdbCache struct {
	sync.Mutex
	netns uint64
	at    time.Time
	ents  []fdbEntry // every bridge's
}

const fdbCacheTTL = 100 * time.Millisecond

func (n *nlFDB) entries(bridge int) ([]fdbEntry, error) {
	n.bridge = bridge
	fdbCache.Lock()
	defer fdbCache.Unlock()
	if n.netns == 0 || fdbCache.netns != n.netns || time.Since(fdbCache.at) >= fdbCacheTTL {
		all, err := n.dumpFDB()
		if err != nil {
			return nil, err
		}
		fdbCache.ents, fdbCache.at, fdbCache.netns = all, time.Now(), n.netns
	}
	var out []fdbEntry
	for _, e := range fdbCache.ents {
		if e.Master == bridge {
			out = append(out, e)
		}
	}
	return out, nil
}

// patchCache records a change made through n: the entries for mac on vlan
// are replaced by e, or removed when e is nil.
func (n *nlFDB) patchCache(mac net.HardwareAddr, vlan uint16, e *fdbEntry) {
	fdbCache.Lock()
	defer fdbCache.Unlock()
	if n.netns == 0 || fdbCache.netns != n.netns {
		return
	}
	// In place: a wave patches once per guest, and copying the table each
	// time cost more than the dump it saves.
	ents := fdbCache.ents
	for i := 0; i < len(ents); {
		if ents[i].VLAN == vlan && bytes.Equal(ents[i].MAC, mac) {
			ents[i] = ents[len(ents)-1]
			ents = ents[:len(ents)-1]
			continue
		}
		i++
	}
	if e != nil {
		ents = append(ents, *e)
	}
	fdbCache.ents = ents
}

func (n *nlFDB) dumpFDB() ([]fdbEntry, error) {
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
		out = append(out, e)
	}
	return out, nil
}

// linkCache shares one link dump between the repairs of a wave of arrivals.
// The dump is the costliest step of a repair: a host receiving 200 guests
// at once listed every one of its 400 links 200 times, and the last guests'
// first frames left most of a second late. Interface addresses change by
// operator action, not within a second. Keyed by network namespace, since
// tests repair in several from one process.
var linkCache struct {
	sync.Mutex
	netns uint64
	at    time.Time
	links []Link
}

const linkCacheTTL = time.Second

func (n *nlFDB) links() ([]Link, error) {
	var st unix.Stat_t
	cacheable := unix.Stat("/proc/thread-self/ns/net", &st) == nil
	linkCache.Lock()
	defer linkCache.Unlock()
	if cacheable && linkCache.netns == st.Ino && time.Since(linkCache.at) < linkCacheTTL {
		return linkCache.links, nil
	}
	links, err := n.dumpLinks()
	if err == nil && cacheable {
		linkCache.netns, linkCache.at, linkCache.links = st.Ino, time.Now(), links
	}
	return links, err
}

func (n *nlFDB) dumpLinks() ([]Link, error) {
	// Statistics are most of each message.
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
	if err != nil {
		n.dropCache()
		return netErr(err)
	}
	n.patchCache(mac, vlan, &fdbEntry{Port: port, Master: n.bridge, MAC: mac, VLAN: vlan, State: unix.NUD_REACHABLE, Flags: unix.NTF_MASTER})
	return nil
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
		err = nil // aged out meanwhile
	}
	if err != nil {
		n.dropCache()
		return netErr(err)
	}
	n.patchCache(e.MAC, e.VLAN, nil)
	return nil
}

func (n *nlFDB) dropCache() {
	fdbCache.Lock()
	fdbCache.at = time.Time{}
	fdbCache.Unlock()
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
