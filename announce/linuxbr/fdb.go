package linuxbr

import (
	"context"
	"errors"
	"fmt"
	"net"
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
}

// RepairFDB makes the bridge's forwarding database point mac at the VM port
// before any announcement leaves. While the guest lived elsewhere, the host
// bridge learned its MAC behind an uplink from its broadcasts, and until the
// entry changes the bridge drops the network's replies to the guest. The one
// entry the bridge forwards by (mac on Path.VLAN when it filters VLANs, else
// on no VLAN) is read from the kernel at the moment of the repair, never from
// a copy: an entry learned a millisecond ago counts. When it points at another
// port it is replaced by a dynamic entry on the VM port, which ages and
// re-learns like any other. changed reports whether anything moved.
//
// It refuses with ErrHostOwnedMAC, touching nothing, when that entry is a
// local (permanent) one: the address is the bridge's, a port's or one an
// operator pinned. Addresses of the host's other interfaces are the callers'
// to refuse before planning (resolve.DropHostOwned).
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
	if err != nil && !errors.Is(err, ErrHostOwnedMAC) {
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
	if e.local() {
		return false, fmt.Errorf("MAC %s %w: it is a local entry of bridge %q%s", mac, ErrHostOwnedMAC, p.Bridge.Name, localOwner(p, e.Port))
	}
	if e.Port == p.Port.Index {
		return false, nil
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if err := ops.move(p.Port.Index, mac, vid); err != nil {
		return false, fmt.Errorf("bridge %q: repairing FDB entry %s vlan %d: %v", p.Bridge.Name, mac, vid, err)
	}
	return true, nil
}

// localOwner names the port a local entry sits on, when the path knows it;
// the bridge's own address sits on the bridge.
func localOwner(p *Path, ifindex int) string {
	if ifindex == p.Port.Index {
		return fmt.Sprintf(" on port %q", p.Port.Name)
	}
	for _, u := range p.Uplinks {
		if u.Index == ifindex {
			return fmt.Sprintf(" on port %q", u.Name)
		}
	}
	return ""
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

// nudPermanent is NUD_PERMANENT, the state of the bridge's local entries.
const nudPermanent = 0x80

func (e fdbEntry) local() bool { return e.State&nudPermanent != 0 }
