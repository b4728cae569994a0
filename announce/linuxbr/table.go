package linuxbr

import (
	"fmt"
	"sort"
)

// TableLink is one row of a TableHost: what rtnetlink link messages say of
// a link.
type TableLink struct {
	Link
	// Kind is IFLA_INFO_KIND ("bridge", "vlan", "veth", ...; "" for NICs).
	Kind string
	// Master is the ifindex of the link's master, 0 when it has none.
	Master int
	// State is the port's carrier and STP state, from the same link
	// messages, when HasState is set; without it the port is taken to
	// forward. (A value, not a pointer: the daemon builds a table per
	// arrival and keeps it allocation-free.)
	State    PortState
	HasState bool
}

// TableHost is a Host over links the caller already holds: the daemon keeps
// every link of the host from rtnetlink events, so resolving a path from its
// table costs no system call and sees the same links that made the port
// ready. Link messages do not carry a bridge's VLAN settings; those come
// from Filtering and VLANTables, asked only for a bridge that filters.
type TableHost struct {
	Links []TableLink
	// Filtering reports whether the named bridge filters VLANs; nil means
	// none does.
	Filtering func(bridge string) (bool, error)
	// VLANTables returns every bridge port's VLAN table by ifindex. It is
	// called at most once per TableHost, so one resolution sees one
	// consistent table; nil makes PortVLANs fail.
	VLANTables func() (map[int][]VLAN, error)

	vlans map[int][]VLAN
}

var _ Host = (*TableHost)(nil)

func (h *TableHost) find(name string) (*TableLink, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	for i := range h.Links {
		if h.Links[i].Name == name {
			return &h.Links[i], nil
		}
	}
	return nil, ifErr(name, ErrNotFound)
}

func (h *TableHost) byIndex(index int) (*TableLink, bool) {
	for i := range h.Links {
		if h.Links[i].Index == index {
			return &h.Links[i], true
		}
	}
	return nil, false
}

func (h *TableHost) LinkByName(name string) (Link, error) {
	l, err := h.find(name)
	if err != nil {
		return Link{}, err
	}
	return l.Link, nil
}

func (h *TableHost) LinkByIndex(index int) (Link, error) {
	if l, ok := h.byIndex(index); ok {
		return l.Link, nil
	}
	return Link{}, fmt.Errorf("interface index %d %w", index, ErrNotFound)
}

func (h *TableHost) Master(name string) (string, error) {
	l, err := h.find(name)
	if err != nil || l.Master == 0 {
		return "", err
	}
	m, ok := h.byIndex(l.Master)
	if !ok {
		return "", fmt.Errorf("interface %q: its master, index %d, %w", name, l.Master, ErrNotFound)
	}
	return m.Name, nil
}

func (h *TableHost) Kind(name string) (string, error) {
	l, err := h.find(name)
	if err != nil {
		return "", err
	}
	return l.Kind, nil
}

func (h *TableHost) bridge(name string) (*TableLink, error) {
	b, err := h.find(name)
	if err != nil {
		return nil, err
	}
	if b.Kind != KindBridge {
		return nil, fmt.Errorf("interface %q is not a bridge", name)
	}
	return b, nil
}

func (h *TableHost) BridgePorts(bridge string) ([]string, error) {
	b, err := h.bridge(bridge)
	if err != nil {
		return nil, err
	}
	var ports []string
	for _, l := range h.Links {
		if l.Master == b.Index {
			ports = append(ports, l.Name)
		}
	}
	sort.Strings(ports)
	return ports, nil
}

func (h *TableHost) VLANFiltering(bridge string) (bool, error) {
	if _, err := h.bridge(bridge); err != nil {
		return false, err
	}
	if h.Filtering == nil {
		return false, nil
	}
	return h.Filtering(bridge)
}

func (h *TableHost) PortVLANs(port string) ([]VLAN, error) {
	l, err := h.find(port)
	if err != nil {
		return nil, err
	}
	if h.vlans == nil {
		if h.VLANTables == nil {
			return nil, fmt.Errorf("interface %q: no source for the bridge VLAN table", port)
		}
		t, err := h.VLANTables()
		if err != nil {
			return nil, err
		}
		if t == nil {
			t = map[int][]VLAN{}
		}
		h.vlans = t
	}
	return h.vlans[l.Index], nil
}

func (h *TableHost) IsVLANDevice(name string) (bool, error) {
	l, err := h.find(name)
	if err != nil {
		return false, err
	}
	return l.Kind == KindVLAN, nil
}

// PortState implements PortStater from the table.
func (h *TableHost) PortState(name string) (PortState, error) {
	l, err := h.find(name)
	if err != nil {
		return PortState{}, err
	}
	if !l.HasState {
		return PortState{STP: BRUnknown}, nil
	}
	return l.State, nil
}

// SysfsVLANFiltering reads a bridge's vlan_filtering from sysfs under
// sysRoot ("" means "/sys"): one small file, for a TableHost's Filtering.
func SysfsVLANFiltering(sysRoot string) func(bridge string) (bool, error) {
	s := &SysfsHost{Root: sysRoot}
	return s.VLANFiltering
}
