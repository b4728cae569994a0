package daemon

import (
	"bytes"
	"net"
	"time"

	"go.uber.org/zap"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/config"
	"github.com/selfannounce/selfannounce/announce/netwatch"
	"github.com/selfannounce/selfannounce/announce/ovs"
)

// Open vSwitch ports come from OVSDB, not netlink: a kernel-datapath port
// shows master ovs-system there and a userspace-datapath port no master at
// all, and neither says which bridge, VLAN or OpenFlow port it has. They are
// keyed by interface name (unique in OVSDB) and ready when OVS reports link
// and admin state up with an ofport, on a watched bridge (see ovsReady). Triggers are the
// Linux ones: carrier for vif*, a first guest frame for taps.

// ovsKeyPrefix marks OVS ports in the port table.
const ovsKeyPrefix = "ovs:"

// OVSMasterKind is IFLA_INFO_KIND of the kernel datapath's ovs-system device.
const OVSMasterKind = "openvswitch"

func ovsKey(name string) string { return ovsKeyPrefix + name }

// Warmer is an OVS planner that can connect to a bridge ahead of need, so
// the first frame of an arrival does not wait for an OpenFlow handshake.
type Warmer interface {
	Warm(bridge string)
}

// SetOVS installs the planner for OVS ports, once OVS support has started.
func (dm *Daemon) SetOVS(p Planner) {
	dm.mu.Lock()
	defer dm.mu.Unlock()
	dm.d.OVS = p
}

// OVSInitial takes the OVS ports present when OVSDB was first read. As with
// links at start-up, ports already ready are not announced unless
// announce-existing is set: a daemon or OVSDB restart must never storm.
func (dm *Daemon) OVSInitial(ports []ovs.Port) {
	now := dm.d.Now()
	dm.mu.Lock()
	defer dm.mu.Unlock()
	if dm.closed {
		return
	}
	for _, op := range ports {
		dm.ovsPortsMap()[op.Name] = op
		if dm.ports[ovsKey(op.Name)] != nil {
			continue
		}
		p := dm.ovsTrack(op)
		if p == nil {
			continue
		}
		dm.atStart(p, dm.ovsReady(op), now)
	}
	dm.gaugePorts()
}

// OVSEvent handles one change reported by the OVSDB monitor. The monitor
// reports only differences, also across reconnects, so a port that was
// there before an ovsdb-server restart produces no event at all.
func (dm *Daemon) OVSEvent(ev ovs.Event) {
	now := dm.d.Now()
	dm.mu.Lock()
	defer dm.mu.Unlock()
	if dm.closed {
		return
	}
	op := ev.Port
	key := ovsKey(op.Name)
	p := dm.ports[key]
	if ev.Deleted {
		delete(dm.ovsPortsMap(), op.Name)
		if p != nil {
			dm.leave(p, "deleted")
			dm.untrack(p)
			delete(dm.ports, key)
		}
		dm.gaugePorts()
		return
	}
	dm.ovsPortsMap()[op.Name] = op
	if dm.onLinuxBridge(op.Name) {
		// A row for a name a Linux bridge holds now: netlink wins.
		if p != nil {
			dm.leave(p, "on a Linux bridge")
			dm.untrack(p)
			delete(dm.ports, key)
		}
		dm.gaugePorts()
		return
	}
	if p != nil && ev.Prev != nil && ev.Prev.IfaceUUID != op.IfaceUUID {
		// Deleted and created again under the same name between two reads:
		// a new port, whose arrival is new too.
		dm.leave(p, "re-created")
		dm.untrack(p)
		delete(dm.ports, key)
		p = nil
	}
	if p == nil {
		if p = dm.ovsTrack(op); p == nil {
			dm.gaugePorts()
			return
		}
	}
	dm.ovsRefreshIndex(p)
	dm.update(p, dm.ovsReady(op), now)
	dm.gaugePorts()
}

func (dm *Daemon) ovsPortsMap() map[string]ovs.Port {
	if dm.ovsPorts == nil {
		dm.ovsPorts = map[string]ovs.Port{}
	}
	return dm.ovsPorts
}

// ovsReady: OVS has given the port an OpenFlow number on a bridge the
// config watches, and the port is up with carrier. Carrier and admin state
// come from netlink when the port has a kernel netdev: OVS copies them into
// link_state and admin_state from the very same kernel flags, but 10-15 ms
// later (measured here), which is a lost ping at 10 ms. Ports without a
// netdev (DPDK) rely on OVSDB alone.
func (dm *Daemon) ovsReady(op ovs.Port) bool {
	if op.OFPort <= 0 || !dm.cfg.BridgeWatched(op.Bridge) {
		return false
	}
	if l, ok := dm.linkByName(op.Name); ok {
		return l.AdminUp && l.OperUp
	}
	return op.AdminUp && op.LinkUp
}

func (dm *Daemon) linkByName(name string) (netwatch.Link, bool) {
	for _, l := range dm.links {
		if l.Name == name {
			return l, true
		}
	}
	return netwatch.Link{}, false
}

// ovsLinkEvent handles a netlink event for a link that belongs to Open
// vSwitch and reports whether it did; the Linux-bridge path must then leave
// the link alone.
func (dm *Daemon) ovsLinkEvent(ev netwatch.Event, now time.Time) bool {
	l := ev.Link
	if !dm.ovsLink(l) {
		return false
	}
	if ev.Deleted {
		delete(dm.links, l.Index)
	} else {
		dm.links[l.Index] = l
	}
	// A port that moved from a Linux bridge to the kernel datapath.
	if lp := dm.ports[linuxKey(l.Index)]; lp != nil {
		dm.leave(lp, "moved to Open vSwitch")
		dm.untrack(lp)
		delete(dm.ports, lp.key)
	}
	if op, ok := dm.ovsPorts[l.Name]; ok {
		if p := dm.ports[ovsKey(l.Name)]; p != nil {
			dm.ovsRefreshIndex(p)
			dm.update(p, dm.ovsReady(op), now)
		}
	}
	dm.gaugePorts()
	return true
}

// ovsTrack starts following an OVS port that matches a trigger rule. A
// Linux entry for the same netdev, made while OVS had not reported it yet,
// is taken over: the guest frame it may have seen still counts.
func (dm *Daemon) ovsTrack(op ovs.Port) *port {
	tr, ok := dm.cfg.TriggerFor(op.Name)
	if !ok || dm.onLinuxBridge(op.Name) {
		return nil
	}
	p := &port{key: ovsKey(op.Name), name: op.Name, backend: ovsBridge, trigger: tr}
	p.ifindex = dm.ifindexByName(op.Name)
	for k, lp := range dm.ports {
		if lp.backend != linuxBridge || lp.name != op.Name {
			continue
		}
		dm.untrack(lp)
		if lp.frameSeen {
			p.frameSeen, p.frameMAC, p.frameAt = true, lp.frameMAC, lp.frameAt
		}
		delete(dm.ports, k)
	}
	dm.ports[p.key] = p
	if w, ok := dm.d.OVS.(Warmer); ok {
		w.Warm(op.Bridge)
	}
	if tr == config.TriggerGuestFrame && !p.frameSeen {
		dm.startListening(p)
	}
	if tr == config.TriggerXenStart {
		dm.followStart(p)
	}
	if tr != config.TriggerManual {
		dm.prefetch(p)
	}
	return p
}

// ovsRefreshIndex follows the kernel netdev behind an OVS port: a tap that
// QEMU re-creates keeps its OVSDB row but gets a new ifindex, and the
// guest-frame listener must move with it.
func (dm *Daemon) ovsRefreshIndex(p *port) {
	idx := dm.ifindexByName(p.name)
	if idx == p.ifindex {
		return
	}
	hadListener := p.listen != nil
	dm.stopListening(p)
	p.ifindex = idx
	if hadListener || (p.trigger == config.TriggerGuestFrame && !p.announced && !p.frameSeen) {
		dm.startListening(p)
	}
}

// ifindexByName looks in the netlink view first, then asks the kernel:
// OVSDB can report a port before its RTM_NEWLINK has been read.
func (dm *Daemon) ifindexByName(name string) int {
	if l, ok := dm.linkByName(name); ok {
		return l.Index
	}
	if dm.d.ListenFrames == nil {
		return 0
	}
	if ifi, err := net.InterfaceByName(name); err == nil {
		return ifi.Index
	}
	return 0
}

// ovsLink reports whether a netlink link belongs to Open vSwitch, so the
// Linux-bridge path must leave it alone: a port OVSDB lists (a
// userspace-datapath port shows no master in netlink), or one enslaved to
// the kernel datapath's ovs-system.
//
// Netlink's master wins over OVSDB: libvirt reuses vnetN names, and a stale
// Interface row (ovs-vswitchd down, a port never deleted) must not hide the
// Linux-bridge port that now has the name.
func (dm *Daemon) ovsLink(l netwatch.Link) bool {
	if l.Master != 0 {
		if m, ok := dm.links[l.Master]; ok {
			switch m.Kind {
			case OVSMasterKind:
				return true
			case "bridge":
				return false
			}
		}
	}
	_, ok := dm.ovsPorts[l.Name]
	return ok
}

// onLinuxBridge reports whether the netdev named name is enslaved to a
// Linux bridge, as netlink last said.
func (dm *Daemon) onLinuxBridge(name string) bool {
	l, ok := dm.linkByName(name)
	if !ok || l.Master == 0 {
		return false
	}
	m, ok := dm.links[l.Master]
	return ok && m.Kind == "bridge"
}

// ovsIdentity applies the OVS identity rule to what the resolvers found:
// external_ids:attached-mac, written by dom0 or libvirt, names the guest
// unless a config guests entry matches the port; the addresses come from
// the resolvers when they agree on the MAC.
func (dm *Daemon) ovsIdentity(p *port, g announce.Guest, ok bool) (announce.Guest, bool) {
	op, have := dm.ovsPorts[p.name]
	if !have || op.MAC == nil || announce.CheckGuestMAC(op.MAC) != nil {
		return g, ok
	}
	if ok && g.Source == "config" {
		return g, ok
	}
	out := announce.Guest{MAC: append(net.HardwareAddr(nil), op.MAC...), Source: "ovsdb"}
	if ok {
		if bytes.Equal(g.MAC, op.MAC) {
			out.IPs = g.IPs
			out.Source = "ovsdb+" + g.Source
		} else {
			dm.d.Log.Warn("attached-mac and resolver disagree; using attached-mac without addresses",
				zap.String("port", p.name), zap.Stringer("attached_mac", op.MAC), zap.Stringer("resolved_mac", g.MAC), zap.String("resolver", g.Source))
		}
	}
	return out, true
}
