package linuxbr

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// SysfsHost reads links from a sysfs tree laid out like /sys/class/net.
// The bridge VLAN table is not in sysfs; VLANTable supplies it, and LinkKind
// names links sysfs leaves untyped (veth, for one).
type SysfsHost struct {
	// Root is where sysfs is mounted, "/sys" on a live host.
	Root string
	// VLANTable returns a bridge port's VLAN table by ifindex. Nil makes
	// PortVLANs fail.
	VLANTable func(ifindex int) ([]VLAN, error)
	// LinkKind names a link by ifindex when sysfs does not; nil or "" leaves
	// the kind unknown.
	LinkKind func(ifindex int) (string, error)
}

var _ Host = (*SysfsHost)(nil)

func (s *SysfsHost) dir(name string) string {
	root := s.Root
	if root == "" {
		root = "/sys"
	}
	return filepath.Join(root, "class", "net", name)
}

func (s *SysfsHost) exists(name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	if _, err := os.Stat(s.dir(name)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return ifErr(name, ErrNotFound)
		}
		return err
	}
	return nil
}

func (s *SysfsHost) read(name, file string) (string, error) {
	b, err := os.ReadFile(filepath.Join(s.dir(name), file))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func (s *SysfsHost) LinkByName(name string) (Link, error) {
	if err := s.exists(name); err != nil {
		return Link{}, err
	}
	idx, err := s.read(name, "ifindex")
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Link{}, ifErr(name, ErrNotFound)
		}
		return Link{}, err
	}
	n, err := strconv.Atoi(idx)
	if err != nil || n <= 0 {
		return Link{}, fmt.Errorf("interface %q: malformed ifindex %q in sysfs", name, idx)
	}
	l := Link{Name: name, Index: n}
	// Links without an Ethernet address (tun, ip6tnl, ...) keep MAC nil.
	if a, err := s.read(name, "address"); err == nil {
		if mac, err := net.ParseMAC(a); err == nil && len(mac) == 6 {
			l.MAC = mac
		}
	}
	return l, nil
}

func (s *SysfsHost) LinkByIndex(index int) (Link, error) {
	ents, err := os.ReadDir(s.dir(""))
	if err != nil {
		return Link{}, err
	}
	for _, e := range ents {
		idx, err := s.read(e.Name(), "ifindex")
		if err == nil && idx == strconv.Itoa(index) {
			return s.LinkByName(e.Name())
		}
	}
	return Link{}, fmt.Errorf("interface index %d %w", index, ErrNotFound)
}

func (s *SysfsHost) Master(name string) (string, error) {
	if err := s.exists(name); err != nil {
		return "", err
	}
	t, err := os.Readlink(filepath.Join(s.dir(name), "master"))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return filepath.Base(t), nil
}

func (s *SysfsHost) isDir(name, sub string) bool {
	fi, err := os.Stat(filepath.Join(s.dir(name), sub))
	return err == nil && fi.IsDir()
}

func (s *SysfsHost) Kind(name string) (string, error) {
	if err := s.exists(name); err != nil {
		return "", err
	}
	if ue, err := s.read(name, "uevent"); err == nil {
		for _, line := range strings.Split(ue, "\n") {
			if v, ok := strings.CutPrefix(line, "DEVTYPE="); ok && v != "" {
				return v, nil
			}
		}
	}
	switch {
	case s.isDir(name, "bridge"):
		return KindBridge, nil
	case s.isDir(name, "bonding"):
		return KindBond, nil
	}
	if _, err := os.Stat(filepath.Join(s.dir(name), "tun_flags")); err == nil {
		return KindTun, nil
	}
	if s.LinkKind == nil {
		return "", nil
	}
	l, err := s.LinkByName(name)
	if err != nil {
		return "", err
	}
	return s.LinkKind(l.Index)
}

func (s *SysfsHost) BridgePorts(bridge string) ([]string, error) {
	if err := s.exists(bridge); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(filepath.Join(s.dir(bridge), "brif"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("interface %q is not a bridge", bridge)
	}
	if err != nil {
		return nil, err
	}
	ports := make([]string, 0, len(ents))
	for _, e := range ents {
		ports = append(ports, e.Name())
	}
	sort.Strings(ports)
	return ports, nil
}

func (s *SysfsHost) VLANFiltering(bridge string) (bool, error) {
	if err := s.exists(bridge); err != nil {
		return false, err
	}
	if !s.isDir(bridge, "bridge") {
		return false, fmt.Errorf("interface %q is not a bridge", bridge)
	}
	v, err := s.read(bridge, "bridge/vlan_filtering")
	if errors.Is(err, fs.ErrNotExist) {
		// Kernels built without CONFIG_BRIDGE_VLAN_FILTERING lack the file.
		return false, nil
	}
	if err != nil {
		return false, err
	}
	switch v {
	case "0":
		return false, nil
	case "1":
		return true, nil
	}
	return false, fmt.Errorf("bridge %q: unexpected vlan_filtering %q in sysfs", bridge, v)
}

func (s *SysfsHost) PortVLANs(port string) ([]VLAN, error) {
	l, err := s.LinkByName(port)
	if err != nil {
		return nil, err
	}
	if s.VLANTable == nil {
		return nil, fmt.Errorf("interface %q: no source for the bridge VLAN table", port)
	}
	return s.VLANTable(l.Index)
}

func (s *SysfsHost) IsVLANDevice(name string) (bool, error) {
	k, err := s.Kind(name)
	if err != nil {
		return false, err
	}
	return k == KindVLAN, nil
}

// PortState implements PortStater from operstate, carrier and brport/state.
// A link whose driver reports operstate "unknown" (tun in some modes) has
// carrier when its carrier file says 1.
func (s *SysfsHost) PortState(name string) (PortState, error) {
	if err := s.exists(name); err != nil {
		return PortState{}, err
	}
	st := PortState{STP: BRUnknown}
	op, err := s.read(name, "operstate")
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// Not a tree that knows (a test fixture): assume carrier.
	case err != nil:
		return PortState{}, err
	case op == "up":
	case op == "unknown":
		// Reading carrier fails with EINVAL while the link is admin-down.
		c, err := s.read(name, "carrier")
		st.Down = !errors.Is(err, fs.ErrNotExist) && (err != nil || c != "1")
	default:
		st.Down = true
	}
	v, err := s.read(name, "brport/state")
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return PortState{}, err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > 4 {
		return PortState{}, fmt.Errorf("interface %q: malformed brport/state %q in sysfs", name, v)
	}
	st.STP = BRState(n)
	return st, nil
}
