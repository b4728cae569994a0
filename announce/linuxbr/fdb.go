package linuxbr

import (
	"bytes"
	"context"
	"fmt"
	"net"

	"github.com/selfannounce/selfannounce/announce"
)

// fdbOps is the kernel state RepairFDB reads and changes.
type fdbOps interface {
	// entries returns the forwarding database of the bridge with ifindex
	// bridge (entries whose NDA_MASTER is the bridge).
	entries(bridge int) ([]fdbEntry, error)
	// links returns every link of the host with its address.
	links() ([]Link, error)
	// move points mac/vlan at port as a dynamic entry, creating the entry
	// or atomically re-pointing an existing one.
	move(port int, mac net.HardwareAddr, vlan uint16) error
	// remove deletes e.
	remove(e fdbEntry) error
}

// RepairFDB makes the bridge's forwarding database point mac at the VM port
// before any announcement leaves. While the guest lived elsewhere, the host
// bridge learned its MAC behind an uplink from its broadcasts, and until the
// entry changes the bridge drops the network's replies to the guest: every
// entry for mac on the bridge (on Path.VLAN when it filters VLANs) that
// points at another port is replaced by a dynamic entry on the VM port, which
// ages and re-learns like any other. changed reports whether anything moved.
//
// It refuses with ErrHostOwnedMAC, touching nothing, when mac is a local
// (permanent) entry of the bridge or the address of any host interface.
func RepairFDB(ctx context.Context, p *Path, mac net.HardwareAddr) (changed bool, err error) {
	if err := checkRepair(p, mac); err != nil {
		return false, err
	}
	ops, err := dialFDB(ctx)
	if err != nil {
		return false, err
	}
	defer ops.Close()
	return repairFDB(ctx, ops, p, mac)
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

func repairFDB(ctx context.Context, ops fdbOps, p *Path, mac net.HardwareAddr) (bool, error) {
	links, err := ops.links()
	if err != nil {
		return false, err
	}
	for _, l := range links {
		if bytes.Equal(l.MAC, mac) {
			return false, fmt.Errorf("MAC %s %w: it is the address of interface %q", mac, ErrHostOwnedMAC, l.Name)
		}
	}
	ents, err := ops.entries(p.Bridge.Index)
	if err != nil {
		return false, err
	}
	var vid uint16
	if p.VLANFiltering {
		vid = p.VLAN
	}
	var stale []fdbEntry
	for _, e := range ents {
		if !bytes.Equal(e.MAC, mac) {
			continue
		}
		// Checked on every VLAN: a local entry anywhere means the address is
		// the host's.
		if e.local() {
			return false, fmt.Errorf("MAC %s %w: it is a local entry of bridge %q", mac, ErrHostOwnedMAC, p.Bridge.Name)
		}
		if p.VLANFiltering && e.VLAN != vid {
			continue
		}
		if e.Port != p.Port.Index {
			stale = append(stale, e)
		}
	}
	changed := false
	for _, e := range stale {
		if err := ctx.Err(); err != nil {
			return changed, err
		}
		if e.VLAN == vid {
			err = ops.move(p.Port.Index, mac, vid)
		} else {
			// Only without VLAN filtering: a leftover entry on a VLAN the
			// bridge no longer looks up still claims another port.
			err = ops.remove(e)
		}
		if err != nil {
			return changed, fmt.Errorf("bridge %q: repairing FDB entry %s vlan %d: %v", p.Bridge.Name, mac, e.VLAN, err)
		}
		changed = true
	}
	return changed, nil
}

// fdbEntry is one entry of a bridge's forwarding database.
type fdbEntry struct {
	Port   int // ifindex the entry points at
	Master int // the bridge's ifindex (NDA_MASTER)
	MAC    net.HardwareAddr
	VLAN   uint16
	State  uint16 // NUD_*
	Flags  uint8  // NTF_*
}

// nudPermanent is NUD_PERMANENT, the state of the bridge's local entries.
const nudPermanent = 0x80

func (e fdbEntry) local() bool { return e.State&nudPermanent != 0 }
