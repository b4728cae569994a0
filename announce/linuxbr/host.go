package linuxbr

import (
	"fmt"
	"net"
	"sort"
	"strings"
)

// Link is a network interface.
type Link struct {
	Name  string
	Index int
	MAC   net.HardwareAddr
}

// VLAN is one row of a bridge port's VLAN table.
type VLAN struct {
	ID uint16
	// PVID: untagged frames entering the port are put on this VLAN.
	PVID bool
	// Untagged: frames on this VLAN leave the port without a tag.
	Untagged bool
}

// Link kinds as the kernel names them (IFLA_INFO_KIND / uevent DEVTYPE).
const (
	KindBridge      = "bridge"
	KindBond        = "bond"
	KindVLAN        = "vlan"
	KindOpenvSwitch = "openvswitch"
	KindTun         = "tun"
	KindVeth        = "veth"
)

// OVSMaster is the master of every port of the kernel OVS datapath.
const OVSMaster = "ovs-system"

// Host is the read-only view of the OS that Resolve needs. Every method
// returns an error wrapping ErrNotFound when the named link does not exist.
type Host interface {
	LinkByName(name string) (Link, error)
	LinkByIndex(index int) (Link, error)
	// Master returns the name of the link's master, "" when it has none.
	Master(name string) (string, error)
	// Kind returns the link's kind ("bridge", "bond", "vlan", "veth",
	// "openvswitch", ...), "" when unknown.
	Kind(name string) (string, error)
	// BridgePorts returns the names of the bridge's ports.
	BridgePorts(bridge string) ([]string, error)
	VLANFiltering(bridge string) (bool, error)
	// PortVLANs returns the port's VLAN table on its bridge.
	PortVLANs(port string) ([]VLAN, error)
	// IsVLANDevice reports whether the link is an 802.1Q device (eth0.5),
	// which tags what is written on it by itself.
	IsVLANDevice(name string) (bool, error)
}

// BRState is a bridge port's spanning-tree state, the kernel's BR_STATE_*
// (brport/state in sysfs, IFLA_BRPORT_STATE).
type BRState uint8

// Bridge port states.
const (
	BRDisabled   BRState = 0
	BRListening  BRState = 1
	BRLearning   BRState = 2
	BRForwarding BRState = 3
	BRBlocking   BRState = 4
	// BRUnknown: not known; the port is assumed to forward.
	BRUnknown BRState = 0xff
)

func (s BRState) String() string {
	switch s {
	case BRDisabled:
		return "disabled"
	case BRListening:
		return "listening"
	case BRLearning:
		return "learning"
	case BRForwarding:
		return "forwarding"
	case BRBlocking:
		return "blocking"
	case BRUnknown:
		return "unknown"
	}
	return fmt.Sprintf("state %d", uint8(s))
}

// PortState is whether a bridge port can carry a frame out right now.
type PortState struct {
	// Down: the link has no carrier (or is admin-down).
	Down bool
	// STP is the port's state on its bridge; BRUnknown when not known.
	STP BRState
}

// unusable says why a port in state s must not carry announcements, "" if
// it may. A disabled port is one whose link is down.
func (s PortState) unusable() string {
	switch {
	case s.Down:
		return "no carrier"
	case s.STP == BRForwarding || s.STP == BRUnknown:
		return ""
	case s.STP == BRDisabled:
		return "port disabled"
	}
	return "STP " + s.STP.String()
}

// PortStater is implemented by Hosts that know their bridge ports' carrier
// and STP state. Resolve leaves out uplinks that cannot forward; with a Host
// that does not implement it, every uplink is assumed to forward.
type PortStater interface {
	PortState(name string) (PortState, error)
}

// ValidName checks an interface name as the kernel's dev_valid_name does,
// which also keeps names from escaping a sysfs directory.
func ValidName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty interface name")
	case len(name) > 15:
		return fmt.Errorf("interface name %q is longer than 15 bytes", name)
	case name == "." || name == "..":
		return fmt.Errorf("invalid interface name %q", name)
	case strings.ContainsAny(name, "/: \t\n\r\v\f"):
		return fmt.Errorf("invalid interface name %q (contains '/', ':' or whitespace)", name)
	}
	return nil
}

// StaticLink describes one link of a StaticHost.
type StaticLink struct {
	Link
	Kind   string
	Master string
	// VLANs is the port's VLAN table on its bridge.
	VLANs []VLAN
	// VLANFiltering applies to bridges.
	VLANFiltering bool
	// Down and STP are the port's state (PortState); the zero STP is
	// BRDisabled, so a StaticLink that leaves it at zero and is not Down
	// is taken as forwarding.
	Down bool
	STP  BRState
}

// StaticHost is a Host built from a literal description, for tests and for
// callers that already know the topology.
type StaticHost []StaticLink

func (h StaticHost) find(name string) (*StaticLink, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	for i := range h {
		if h[i].Name == name {
			return &h[i], nil
		}
	}
	return nil, ifErr(name, ErrNotFound)
}

func (h StaticHost) LinkByName(name string) (Link, error) {
	l, err := h.find(name)
	if err != nil {
		return Link{}, err
	}
	return l.Link, nil
}

func (h StaticHost) LinkByIndex(index int) (Link, error) {
	for _, l := range h {
		if l.Index == index {
			return l.Link, nil
		}
	}
	return Link{}, fmt.Errorf("interface index %d %w", index, ErrNotFound)
}

func (h StaticHost) Master(name string) (string, error) {
	l, err := h.find(name)
	if err != nil {
		return "", err
	}
	return l.Master, nil
}

func (h StaticHost) Kind(name string) (string, error) {
	l, err := h.find(name)
	if err != nil {
		return "", err
	}
	return l.Kind, nil
}

func (h StaticHost) BridgePorts(bridge string) ([]string, error) {
	b, err := h.find(bridge)
	if err != nil {
		return nil, err
	}
	if b.Kind != KindBridge {
		return nil, fmt.Errorf("interface %q is not a bridge", bridge)
	}
	var ports []string
	for _, l := range h {
		if l.Master == bridge {
			ports = append(ports, l.Name)
		}
	}
	sort.Strings(ports)
	return ports, nil
}

func (h StaticHost) VLANFiltering(bridge string) (bool, error) {
	b, err := h.find(bridge)
	if err != nil {
		return false, err
	}
	return b.VLANFiltering, nil
}

func (h StaticHost) PortVLANs(port string) ([]VLAN, error) {
	l, err := h.find(port)
	if err != nil {
		return nil, err
	}
	return l.VLANs, nil
}

func (h StaticHost) IsVLANDevice(name string) (bool, error) {
	l, err := h.find(name)
	if err != nil {
		return false, err
	}
	return l.Kind == KindVLAN, nil
}

// PortState implements PortStater. A StaticLink with STP left at zero and
// Down false forwards: literal topologies seldom spell out port states.
func (h StaticHost) PortState(name string) (PortState, error) {
	l, err := h.find(name)
	if err != nil {
		return PortState{}, err
	}
	st := PortState{Down: l.Down, STP: l.STP}
	if st.STP == BRDisabled && !st.Down {
		st.STP = BRUnknown
	}
	return st, nil
}
