package linuxbr

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/selfannounce/selfannounce/announce"
)

// fdbOps is the kernel state RepairFDB reads and changes.
type fdbOps interface {
	// lookup returns the entry of the bridge with ifindex bridge for
	// mac/vlan, exactly as the bridge would look it up to forward a frame;
	// found is false when there is none.
	lookup(bridge int, mac net.HardwareAddr, vlan uint16) (e fdbEntry, found bool, err error)
	// move points mac/vlan at port as a dynamic entry, creating the entry
	// or atomically re-pointing an existing one.
	move(port int, mac net.HardwareAddr, vlan uint16) error
	// port says what the link with ifindex index is now: its name and its
	// master's ifindex; exists is false when there is no such link.
	port(index int) (name string, master int, exists bool, err error)
}

// RepairFDB makes the bridge's forwarding database point mac at the VM port
// before any announcement leaves. While the guest lived elsewhere, the host
// bridge learned its MAC behind an uplink from its broadcasts, and until the
// entry changes the bridge drops the network's replies to the guest. The one
// entry the bridge forwards by (mac on Path.VLAN when it filters VLANs, else
// on no VLAN) is read from the kernel at the moment of the repair, never from
// a copy: an entry learned a millisecond ago counts. changed reports whether
// anything moved.
//
// Only an entry that can be stale is moved, replaced by a dynamic entry on
// the VM port that ages and re-learns like any other: one that points at an
// uplink of the path (usable or not), or at a port that no longer exists or
// has left the bridge. Anything else is refused with a *RefusedError,
// touching nothing, and the caller must not announce:
//   - a local (permanent) entry: the address is the bridge's, a port's or
//     one an operator pinned (the error also matches ErrHostOwnedMAC);
//   - a static, sticky or externally learned entry: an operator, an
//     anti-spoofing setup or an EVPN control plane such as FRR owns it;
//   - a dynamic entry on another live port of the bridge: another VM has
//     that MAC now, and moving it would let a guest that spoofs a
//     neighbour's address take the neighbour's traffic. The guest's own
//     sibling port (vifN.M-emu or tapN.M beside vifN.M) is not another VM.
//
// Addresses of the host's other interfaces are the callers' to refuse
// before planning (resolve.DropHostOwned).
func RepairFDB(ctx context.Context, p *Path, mac net.HardwareAddr) (changed bool, err error) {
	if err := checkRepair(p, mac); err != nil {
		return false, err
	}
	c, err := dialFDB()
	if err != nil {
		return false, err
	}
	defer c.Close()
	if err := c.setDeadline(ctxDeadline(ctx)); err != nil {
		return false, err
	}
	return repairFDB(ctx, c, p, mac)
}

// FDB repairs as RepairFDB does, over one rtnetlink socket kept between
// repairs: a daemon repairs on every arrival, and opening a socket each time
// cost as much as the repair. It keeps no FDB state, only the socket, which
// belongs to the network namespace of the thread of the first repair; after
// an error the next repair opens a fresh one. The zero FDB is ready to use
// and safe for concurrent use.
type FDB struct {
	// Refused, if set, is called with the reason of every refusal (a
	// RefusalReason), for the daemon's selfannounce_fdb_refusals_total.
	Refused func(reason string)

	mu sync.Mutex
	c  fdbConn
}

// Repair is RepairFDB over f's socket.
func (f *FDB) Repair(ctx context.Context, p *Path, mac net.HardwareAddr) (changed bool, err error) {
	if err := checkRepair(p, mac); err != nil {
		return false, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.c == nil {
		if f.c, err = dialFDB(); err != nil {
			return false, err
		}
	}
	if err := f.c.setDeadline(ctxDeadline(ctx)); err != nil {
		f.drop()
		return false, err
	}
	changed, err = repairFDB(ctx, f.c, p, mac)
	var refused *RefusedError
	if errors.As(err, &refused) && f.Refused != nil {
		f.Refused(string(refused.Reason))
	}
	if err != nil && refused == nil {
		// A reply cut short by the deadline may still be queued.
		f.drop()
		return changed, err
	}
	// A deadline left set arms a runtime timer that would wake the idle
	// daemon when it expires.
	if derr := f.c.setDeadline(time.Time{}); derr != nil {
		f.drop()
	}
	return changed, err
}

// Close releases the socket.
func (f *FDB) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.c == nil {
		return nil
	}
	err := f.c.Close()
	f.c = nil
	return err
}

func (f *FDB) drop() {
	f.c.Close()
	f.c = nil
}

// fdbConn is fdbOps over a socket.
type fdbConn interface {
	fdbOps
	// setDeadline bounds every later request; zero means none.
	setDeadline(t time.Time) error
	Close() error
}

func ctxDeadline(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

func checkRepair(p *Path, mac net.HardwareAddr) error {
	if p == nil || p.Port.Index <= 0 || p.Bridge.Index <= 0 {
		return fmt.Errorf("FDB repair needs a resolved path with port and bridge indexes")
	}
	if err := announce.CheckGuestMAC(mac); err != nil {
		return fmt.Errorf("MAC %s: %v", mac, err)
	}
	return nil
}

// repairFDB repairs the entry of every VLAN the guest sends on: the PVID
// (or no VLAN) and a trunk port's tagged VLANs.
func repairFDB(ctx context.Context, ops fdbOps, p *Path, mac net.HardwareAddr) (bool, error) {
	var vids []uint16
	if !p.VLANFiltering {
		vids = append(vids, 0)
	} else if len(p.Uplinks) > 0 {
		vids = append(vids, p.VLAN)
	}
	for _, t := range p.Tagged {
		vids = append(vids, t.VLAN)
	}
	changed := false
	for _, vid := range vids {
		c, err := repairVLAN(ctx, ops, p, mac, vid)
		changed = changed || c
		if err != nil {
			return changed, err
		}
	}
	return changed, nil
}

func repairVLAN(ctx context.Context, ops fdbOps, p *Path, mac net.HardwareAddr, vid uint16) (bool, error) {
	e, found, err := ops.lookup(p.Bridge.Index, mac, vid)
	if err != nil {
		return false, fmt.Errorf("bridge %q: looking up FDB entry %s vlan %d: %v", p.Bridge.Name, mac, vid, err)
	}
	if !found {
		// Nothing stale: the bridge floods frames for mac, the guest's port
		// included, until it learns the guest's first frame.
		return false, nil
	}
	refuse := func(r RefusalReason, on string) (bool, error) {
		return false, &RefusedError{Reason: r, MAC: mac, VLAN: vid, Bridge: p.Bridge.Name, Port: p.Port.Name, On: on}
	}
	if e.local() {
		return refuse(RefuseLocal, localOwner(p, e.Port))
	}
	if e.Port == p.Port.Index {
		return false, nil
	}
	switch {
	case e.static():
		return refuse(RefuseStatic, portName(ops, p, e.Port))
	case e.Flags&ntfExtLearned != 0:
		return refuse(RefuseExternal, portName(ops, p, e.Port))
	case e.Flags&ntfSticky != 0:
		return refuse(RefuseStatic, portName(ops, p, e.Port))
	}
	if e.Port == p.Bridge.Index {
		// A non-local entry on the bridge device itself: the host's.
		return refuse(RefuseLocal, "")
	}
	if !p.isUplink(e.Port) {
		name, master, exists, err := ops.port(e.Port)
		if err != nil {
			return false, fmt.Errorf("bridge %q: FDB entry %s vlan %d points at ifindex %d: %v", p.Bridge.Name, mac, vid, e.Port, err)
		}
		if exists && master == p.Bridge.Index && !siblingPorts(name, p.Port.Name) {
			return refuse(RefuseVMPort, name)
		}
		// The port is gone, or left the bridge: the entry is a leftover.
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if err := ops.move(p.Port.Index, mac, vid); err != nil {
		return false, fmt.Errorf("bridge %q: repairing FDB entry %s vlan %d: %v", p.Bridge.Name, mac, vid, err)
	}
	return true, nil
}

// siblingPorts reports whether a and b are two ports of one Xen guest NIC:
// the netback vif and the emulated NIC's tap of an HVM guest (vifN.M and
// vifN.M-emu with xl, vifN.M and tapN.M on XenServer). The guest's MAC moves
// between them when its PV drivers take over, and both are the guest's.
func siblingPorts(a, b string) bool {
	norm := func(n string) string {
		n = strings.TrimSuffix(n, "-emu")
		if rest, ok := strings.CutPrefix(n, "tap"); ok {
			n = "vif" + rest
		}
		return n
	}
	na, nb := norm(a), norm(b)
	return a != b && strings.HasPrefix(na, "vif") && na == nb
}

// isUplink reports whether ifindex is one of the bridge's uplinks, on the
// PVID or a trunk's tagged VLAN, forwarding or not: an entry learned there
// while the guest lived elsewhere is exactly what the repair exists for.
func (p *Path) isUplink(ifindex int) bool { return p.uplinkName(ifindex) != "" }

// uplinkName names the uplink with ifindex, "" when none of the path's is.
func (p *Path) uplinkName(ifindex int) string {
	for _, u := range p.Uplinks {
		if u.Index == ifindex {
			return u.Name
		}
	}
	for _, u := range p.Unusable {
		if u.Index == ifindex {
			return u.Name
		}
	}
	for _, t := range p.Tagged {
		for _, u := range t.Uplinks {
			if u.Index == ifindex {
				return u.Name
			}
		}
	}
	return ""
}

// localOwner names the port a local entry sits on, when the path knows it;
// the bridge's own address sits on the bridge.
func localOwner(p *Path, ifindex int) string {
	if ifindex == p.Port.Index {
		return p.Port.Name
	}
	return p.uplinkName(ifindex)
}

// portName names the port an entry points at, for the refusal message.
func portName(ops fdbOps, p *Path, ifindex int) string {
	if n := localOwner(p, ifindex); n != "" {
		return n
	}
	if name, _, ok, err := ops.port(ifindex); err == nil && ok {
		return name
	}
	return fmt.Sprintf("ifindex %d", ifindex)
}

// fdbEntry is one entry of a bridge's forwarding database.
type fdbEntry struct {
	Port   int // ifindex the entry points at (the bridge's own for its address)
	Master int // the bridge's ifindex (NDA_MASTER)
	MAC    net.HardwareAddr
	VLAN   uint16
	State  uint16 // NUD_*
	Flags  uint8  // NTF_*
}

// Neighbour states and flags of bridge FDB entries (<linux/neighbour.h>).
const (
	nudPermanent  = 0x80 // NUD_PERMANENT: a local entry
	nudNoARP      = 0x40 // NUD_NOARP: a static entry (`bridge fdb add ... static`)
	ntfExtLearned = 0x10 // NTF_EXT_LEARNED: installed by a control plane or switchdev
	ntfSticky     = 0x40 // NTF_STICKY: never moved by learning
)

func (e fdbEntry) local() bool  { return e.State&nudPermanent != 0 }
func (e fdbEntry) static() bool { return e.State&nudNoARP != 0 }
