// Package netwatch follows the kernel's view of network links through
// rtnetlink, without polling: it tells the daemon when a port joins a bridge,
// comes up, gets carrier, or reaches STP forwarding, since those moments
// decide when an announcement can leave the host.
package netwatch

import (
	"bytes"
	"fmt"
	"net"
	"sort"
)

// STPState is a bridge port's spanning-tree state. The values equal the
// kernel's BR_STATE_* so they can be compared with sysfs and `bridge link`.
type STPState uint8

// Spanning-tree states of a bridge port.
const (
	STPDisabled   STPState = 0 // BR_STATE_DISABLED
	STPListening  STPState = 1 // BR_STATE_LISTENING
	STPLearning   STPState = 2 // BR_STATE_LEARNING
	STPForwarding STPState = 3 // BR_STATE_FORWARDING
	STPBlocking   STPState = 4 // BR_STATE_BLOCKING
	// STPUnknown means the link is not a Linux bridge port, or the kernel
	// has not yet said which state it is in.
	STPUnknown STPState = 0xff
)

func (s STPState) String() string {
	switch s {
	case STPDisabled:
		return "disabled"
	case STPListening:
		return "listening"
	case STPLearning:
		return "learning"
	case STPForwarding:
		return "forwarding"
	case STPBlocking:
		return "blocking"
	case STPUnknown:
		return "unknown"
	}
	return fmt.Sprintf("STPState(%d)", uint8(s))
}

// Link is what the daemon needs to know about one network device.
type Link struct {
	Index int
	Name  string
	MAC   net.HardwareAddr
	Kind  string // IFLA_INFO_KIND: "bridge", "veth", "tun", "openvswitch"; "" for physical NICs
	// Master is the ifindex of the bridge (or other master) the link is
	// enslaved to, 0 if none.
	Master int
	// AdminUp is IFF_UP.
	AdminUp bool
	// OperUp means carrier: operstate UP, or IFF_LOWER_UP for devices whose
	// driver reports operstate UNKNOWN.
	OperUp bool
	// STP is the spanning-tree state of a Linux bridge port; STPUnknown for
	// everything else.
	STP STPState
}

func (l Link) String() string {
	return fmt.Sprintf("%d:%s kind=%q mac=%s master=%d admin=%t oper=%t stp=%s",
		l.Index, l.Name, l.Kind, l.MAC, l.Master, l.AdminUp, l.OperUp, l.STP)
}

// sameView reports whether a and b agree on everything the daemon acts on.
// The MAC is included although it rarely changes: libvirt and XenServer set
// a tap's MAC after creating it, and the daemon matches guests by it.
func (l Link) sameView(o Link) bool {
	return l.Name == o.Name && l.Master == o.Master && l.AdminUp == o.AdminUp &&
		l.OperUp == o.OperUp && l.STP == o.STP && bytes.Equal(l.MAC, o.MAC)
}

// Event reports that a link appeared or changed (Deleted false), or
// disappeared (Deleted true, Link holding its last known state).
type Event struct {
	Link    Link
	Deleted bool
}

func (e Event) String() string {
	if e.Deleted {
		return "deleted " + e.Link.String()
	}
	return e.Link.String()
}

// table is the merged view of every link, by ifindex.
type table map[int]Link

func (t table) snapshot() []Link {
	out := make([]Link, 0, len(t))
	for _, l := range t {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out
}

// apply merges one decoded message into t and returns the event it causes,
// if the daemon's view of the link changed.
func (t table) apply(m *linkMsg) (Event, bool) {
	old, known := t[m.index]
	switch {
	case m.deleted && m.family == afBridge:
		// The port left its bridge; the device itself lives on.
		if !known {
			return Event{}, false
		}
		nl := old
		nl.Master, nl.STP = 0, STPUnknown
		t[m.index] = nl
		return Event{Link: nl}, !nl.sameView(old)
	case m.deleted:
		if !known {
			return Event{}, false
		}
		delete(t, m.index)
		return Event{Link: old, Deleted: true}, true
	}

	nl := old
	if !known {
		nl = Link{Index: m.index, STP: STPUnknown}
	}
	if m.name != nil && string(m.name) != nl.Name {
		nl.Name = string(m.name)
	}
	if m.mac != nil && !bytes.Equal(m.mac, nl.MAC) {
		nl.MAC = append(net.HardwareAddr(nil), m.mac...)
	}
	if m.kind != nil && string(m.kind) != nl.Kind {
		nl.Kind = string(m.kind)
	}
	nl.AdminUp = m.flags&iffUp != 0
	if m.hasOper {
		nl.OperUp = operUp(m.oper, m.flags)
	}

	// A bridge's own AF_BRIDGE messages name the bridge itself as master.
	hasMaster := m.hasMaster && int(m.master) != m.index
	switch m.family {
	case afBridge:
		if hasMaster {
			nl.Master = int(m.master)
		}
		if m.hasSTP {
			nl.STP = m.stp
		}
	default:
		// AF_UNSPEC messages describe the whole device: no IFLA_MASTER means
		// no master, and a bridge port carries its state in the slave data.
		nl.Master = 0
		if hasMaster {
			nl.Master = int(m.master)
		}
		nl.STP = STPUnknown
		if m.hasSTP {
			nl.STP = m.stp
		}
	}
	t[m.index] = nl
	return Event{Link: nl}, !known || !nl.sameView(old)
}

// diff returns the events that turn old into cur: deletions first, so a
// daemon keyed by name sees a vanished link go before a new one takes its
// name, then appearances and changes by ifindex.
func diff(old, cur table) []Event {
	var evs []Event
	for _, l := range old.snapshot() {
		if _, ok := cur[l.Index]; !ok {
			evs = append(evs, Event{Link: l, Deleted: true})
		}
	}
	for _, l := range cur.snapshot() {
		if o, ok := old[l.Index]; !ok || !o.sameView(l) {
			evs = append(evs, Event{Link: l})
		}
	}
	return evs
}

// operUp decides carrier. Virtual devices without operstate support (tun
// in some modes, loopback) report UNKNOWN and expose carrier as
// IFF_LOWER_UP only.
func operUp(oper uint8, flags uint32) bool {
	switch oper {
	case ifOperUp:
		return true
	case ifOperUnknown:
		return flags&iffLowerUp != 0
	}
	return false
}
