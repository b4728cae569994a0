// Package ovs discovers the guest ports of Open vSwitch bridges from OVSDB
// and follows their changes. A guest port is an Interface whose
// external_ids:attached-mac names the guest's MAC (XenServer, xl's
// vif-openvswitch, libvirt and OpenStack all set it); its VLAN is its Port's
// tag, and it can carry an announcement once OVS reports it up with an
// OpenFlow port number.
package ovs

import (
	"bytes"
	"fmt"
	"net"
	"slices"
	"sort"
)

// Port is one OVS Interface with the parts of its Port and Bridge rows that
// matter for announcing on a guest's behalf.
type Port struct {
	Bridge string
	// Datapath is the bridge's datapath_type: "" or "system" for the kernel
	// datapath, whose ports show master ovs-system in netlink; "netdev" for
	// the userspace one, whose ports show no master.
	Datapath string
	Name     string // Interface name, unique across the switch
	PortName string // Port row name; differs from Name for bond members
	Type     string // Interface type: "" (system), internal, tap, patch, ...
	OFPort   int    // -1 when OVS could not add it, 0 while not yet assigned
	// MAC is external_ids:attached-mac, nil when absent or not a unicast MAC.
	MAC      net.HardwareAddr
	Tag      int    // access VLAN, 0 for none
	Trunks   []int  // VLANs a trunk port carries; empty means all
	VLANMode string // "" (implicit from tag/trunks), access, trunk, native-tagged, ...
	LinkUp   bool   // link_state == "up"
	AdminUp  bool   // admin_state == "up"
	// IfaceUUID is the Interface row's UUID: a new one under the same name
	// means the port was deleted and created again.
	IfaceUUID string
}

// Ready reports whether frames can be injected on the port now.
func (p Port) Ready() bool { return p.AdminUp && p.LinkUp && p.OFPort > 0 }

func (p Port) String() string {
	s := fmt.Sprintf("%s/%s ofport=%d", p.Bridge, p.Name, p.OFPort)
	if p.MAC != nil {
		s += " mac=" + p.MAC.String()
	}
	if p.Tag != 0 {
		s += fmt.Sprintf(" tag=%d", p.Tag)
	}
	if len(p.Trunks) > 0 {
		s += fmt.Sprintf(" trunks=%v", p.Trunks)
	}
	return s + fmt.Sprintf(" link=%t admin=%t", p.LinkUp, p.AdminUp)
}

// Equal reports whether two snapshots of a port differ in no field.
func (p Port) Equal(q Port) bool {
	return p.Bridge == q.Bridge && p.Datapath == q.Datapath && p.Name == q.Name &&
		p.PortName == q.PortName && p.Type == q.Type && p.OFPort == q.OFPort &&
		bytes.Equal(p.MAC, q.MAC) && p.Tag == q.Tag && slices.Equal(p.Trunks, q.Trunks) &&
		p.VLANMode == q.VLANMode && p.LinkUp == q.LinkUp && p.AdminUp == q.AdminUp &&
		p.IfaceUUID == q.IfaceUUID
}

// Event is a change to one port. For a deletion Port is the last known
// state. Prev is the state before the change, nil for a port not seen
// before, so consumers can tell arrivals (Prev == nil, or !Prev.Ready() &&
// Port.Ready()) from other updates.
type Event struct {
	Port    Port
	Prev    *Port
	Deleted bool
}

func (e Event) String() string {
	switch {
	case e.Deleted:
		return "deleted " + e.Port.String()
	case e.Prev == nil:
		return "new " + e.Port.String()
	default:
		return "changed " + e.Port.String()
	}
}

// The database rows, reduced to the columns used. libovsdb fills them by
// their ovsdb tags; optional columns are pointers.
type bridgeRow struct {
	UUID         string   `ovsdb:"_uuid"`
	Name         string   `ovsdb:"name"`
	Ports        []string `ovsdb:"ports"`
	DatapathType string   `ovsdb:"datapath_type"`
}

type portRow struct {
	UUID       string   `ovsdb:"_uuid"`
	Name       string   `ovsdb:"name"`
	Interfaces []string `ovsdb:"interfaces"`
	Tag        *int     `ovsdb:"tag"`
	Trunks     []int    `ovsdb:"trunks"`
	VLANMode   *string  `ovsdb:"vlan_mode"`
}

type ifaceRow struct {
	UUID        string            `ovsdb:"_uuid"`
	Name        string            `ovsdb:"name"`
	Type        string            `ovsdb:"type"`
	OFPort      *int              `ovsdb:"ofport"`
	ExternalIDs map[string]string `ovsdb:"external_ids"`
	LinkState   *string           `ovsdb:"link_state"`
	AdminState  *string           `ovsdb:"admin_state"`
}

// Bits of an unknown set: which ephemeral columns a row lacks.
const (
	linkUnknown  = 1
	adminUnknown = 2
)

// buildPorts joins the three tables into one Port per Interface that hangs
// off a bridge. Rows not (yet) linked from a bridge are left out: libovsdb
// fills its cache table by table, so a half-applied transaction can show
// an Interface before the Port that references it. unknown marks, by
// interface name, ports whose link_state or admin_state is empty.
func buildPorts(bridges []bridgeRow, ports []portRow, ifaces []ifaceRow) (out []Port, unknown map[string]uint8) {
	portByUUID := make(map[string]*portRow, len(ports))
	for i := range ports {
		portByUUID[ports[i].UUID] = &ports[i]
	}
	ifaceByUUID := make(map[string]*ifaceRow, len(ifaces))
	for i := range ifaces {
		ifaceByUUID[ifaces[i].UUID] = &ifaces[i]
	}
	unknown = map[string]uint8{}
	for _, b := range bridges {
		for _, pu := range b.Ports {
			pr := portByUUID[pu]
			if pr == nil {
				continue
			}
			for _, iu := range pr.Interfaces {
				ir := ifaceByUUID[iu]
				if ir == nil {
					continue
				}
				p := Port{
					Bridge:    b.Name,
					Datapath:  b.DatapathType,
					Name:      ir.Name,
					PortName:  pr.Name,
					Type:      ir.Type,
					MAC:       attachedMAC(ir.ExternalIDs["attached-mac"]),
					IfaceUUID: ir.UUID,
					LinkUp:    ir.LinkState != nil && *ir.LinkState == "up",
					AdminUp:   ir.AdminState != nil && *ir.AdminState == "up",
				}
				if ir.OFPort != nil {
					p.OFPort = *ir.OFPort
				}
				if ir.LinkState == nil {
					unknown[p.Name] |= linkUnknown
				}
				if ir.AdminState == nil {
					unknown[p.Name] |= adminUnknown
				}
				if pr.Tag != nil {
					p.Tag = *pr.Tag
				}
				if len(pr.Trunks) > 0 {
					p.Trunks = slices.Clone(pr.Trunks)
					slices.Sort(p.Trunks)
				}
				if pr.VLANMode != nil {
					p.VLANMode = *pr.VLANMode
				}
				out = append(out, p)
			}
		}
	}
	sortPorts(out)
	return out, unknown
}

// carryEphemeral keeps the last known link and admin state of ports whose
// columns are empty. Both are ephemeral in the OVS schema: a restarted
// ovsdb-server comes back without them and ovs-vswitchd rewrites them about
// a second later (measured here), which would otherwise read as every port
// going down and up again. Only the same Interface row on the same OpenFlow
// port inherits; a new or re-plugged one starts down.
func carryEphemeral(old map[string]Port, cur []Port, unknown map[string]uint8) {
	for i := range cur {
		p := &cur[i]
		u := unknown[p.Name]
		prev, ok := old[p.Name]
		if u == 0 || !ok || prev.IfaceUUID != p.IfaceUUID || prev.OFPort != p.OFPort || p.OFPort <= 0 {
			continue
		}
		if u&linkUnknown != 0 {
			p.LinkUp = prev.LinkUp
		}
		if u&adminUnknown != 0 {
			p.AdminUp = prev.AdminUp
		}
	}
}

func sortPorts(ps []Port) {
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].Bridge != ps[j].Bridge {
			return ps[i].Bridge < ps[j].Bridge
		}
		return ps[i].Name < ps[j].Name
	})
}

// attachedMAC accepts only a unicast Ethernet address: the value is set by
// management tools, and a broadcast or multicast source would be harmful.
func attachedMAC(s string) net.HardwareAddr {
	if s == "" {
		return nil
	}
	mac, err := net.ParseMAC(s)
	if err != nil || len(mac) != 6 || mac[0]&1 != 0 || bytes.Equal(mac, make([]byte, 6)) {
		return nil
	}
	return mac
}

// diff lists the events that turn old into cur, keyed by interface name
// (unique in OVSDB): deletions first, then additions and changes, each in
// bridge/name order. Ports equal in every field produce nothing, which is
// what keeps a reconnect from re-announcing every guest.
func diff(old map[string]Port, cur []Port) []Event {
	seen := make(map[string]bool, len(cur))
	var dels, rest []Event
	for _, p := range cur {
		seen[p.Name] = true
		prev, ok := old[p.Name]
		switch {
		case !ok:
			rest = append(rest, Event{Port: p})
		case !prev.Equal(p):
			pp := prev
			rest = append(rest, Event{Port: p, Prev: &pp})
		}
	}
	for name, p := range old {
		if !seen[name] {
			dels = append(dels, Event{Port: p, Deleted: true})
		}
	}
	sort.Slice(dels, func(i, j int) bool {
		a, b := dels[i].Port, dels[j].Port
		if a.Bridge != b.Bridge {
			return a.Bridge < b.Bridge
		}
		return a.Name < b.Name
	})
	return append(dels, rest...)
}

func index(ps []Port) map[string]Port {
	m := make(map[string]Port, len(ps))
	for _, p := range ps {
		m[p.Name] = p
	}
	return m
}
