package linuxbr

import (
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
)

// DefaultVMPorts match the ports hypervisors create for guests: Xen netback
// vifs (and their -emu taps), XenServer/QEMU taps and libvirt's vnetN.
var DefaultVMPorts = []string{"vif*", "tap*", "vnet*"}

// Uplink is a bridge port that leads out of the host.
type Uplink struct {
	Link
	// VLAN is the 802.1Q tag the sender must add on this uplink; 0 = none.
	VLAN uint16
}

// Path is the way a guest's frames leave the host.
type Path struct {
	Port   Link // the VM port (vif/tap/vnet)
	Bridge Link
	// VLAN is the VM port's PVID when the bridge filters VLANs, else 0.
	VLAN          uint16
	VLANFiltering bool
	// Uplinks are where announcements are written: the bridge's uplinks on
	// the VM port's VLAN that have carrier and forward. Neither the bridge
	// nor the VM port is ever among them.
	Uplinks []Uplink
	// Unusable are the other uplinks on that VLAN, down or not forwarding
	// (STP blocking, listening, learning): a frame written on one would
	// teach the switch behind it a path the bridge does not use. The FDB
	// repair still counts them as uplinks.
	Unusable []UnusableUplink
}

// UnusableUplink is an uplink left out of a Path, and why.
type UnusableUplink struct {
	Uplink
	Why string // "no carrier", "STP blocking", ...
}

// Resolve finds port's bridge and that bridge's uplinks: every bridge port
// whose name matches none of vmPorts (shell globs; nil means DefaultVMPorts)
// and, on a VLAN-filtering bridge, that carries the VM port's PVID.
func Resolve(h Host, port string, vmPorts []string) (*Path, error) {
	if vmPorts == nil {
		vmPorts = DefaultVMPorts
	}
	for _, p := range vmPorts {
		if _, err := path.Match(p, ""); err != nil {
			return nil, fmt.Errorf("VM port pattern %q is malformed", p)
		}
	}
	if err := ValidName(port); err != nil {
		return nil, err
	}
	pl, err := h.LinkByName(port)
	if err != nil {
		return nil, err
	}
	master, err := h.Master(port)
	if err != nil {
		return nil, err
	}
	if master == "" {
		return nil, ifErrf(port, ErrNotBridgePort, " (it has no master)")
	}
	if master == OVSMaster {
		return nil, ifErrf(port, ErrOVSPort, " (master %s)", master)
	}
	kind, err := h.Kind(master)
	if err != nil {
		return nil, err
	}
	switch kind {
	case KindBridge:
	case KindOpenvSwitch:
		return nil, ifErrf(port, ErrOVSPort, " (master %s)", master)
	default:
		if kind == "" {
			kind = "unknown kind"
		}
		return nil, ifErrf(port, ErrNotBridgePort, " (its master %q is a %s)", master, kind)
	}
	br, err := h.LinkByName(master)
	if err != nil {
		return nil, err
	}
	filtering, err := h.VLANFiltering(master)
	if err != nil {
		return nil, err
	}
	p := &Path{Port: pl, Bridge: br, VLANFiltering: filtering}
	if filtering {
		vlans, err := h.PortVLANs(port)
		if err != nil {
			return nil, err
		}
		pvid, ok := findPVID(vlans)
		if !ok {
			return nil, ifErrf(port, ErrNoPVID, " on VLAN-filtering bridge %q: the bridge drops the guest's untagged frames", master)
		}
		p.VLAN = pvid
	}

	ports, err := h.BridgePorts(master)
	if err != nil {
		return nil, err
	}
	sort.Strings(ports)
	var offVLAN []string
	for _, name := range ports {
		if name == port || matchAny(vmPorts, name) {
			continue
		}
		l, err := h.LinkByName(name)
		if errors.Is(err, ErrNotFound) {
			continue // left the bridge since we listed it
		}
		if err != nil {
			return nil, err
		}
		u := Uplink{Link: l}
		if filtering {
			vlans, err := h.PortVLANs(name)
			if err != nil {
				return nil, err
			}
			v, ok := findVLAN(vlans, p.VLAN)
			if !ok {
				offVLAN = append(offVLAN, name)
				continue
			}
			isVLANDev, err := h.IsVLANDevice(name)
			if err != nil {
				return nil, err
			}
			if !v.Untagged && !isVLANDev {
				u.VLAN = p.VLAN
			}
		}
		if why, err := unusable(h, name); err != nil {
			return nil, err
		} else if why != "" {
			p.Unusable = append(p.Unusable, UnusableUplink{Uplink: u, Why: why})
			continue
		}
		p.Uplinks = append(p.Uplinks, u)
	}
	if len(p.Uplinks) == 0 {
		if len(p.Unusable) > 0 {
			var ws []string
			for _, u := range p.Unusable {
				ws = append(ws, u.Name+": "+u.Why)
			}
			return nil, fmt.Errorf("bridge %q %w (%s)", master, ErrNoForwardingUplink, strings.Join(ws, ", "))
		}
		if len(offVLAN) > 0 {
			return nil, fmt.Errorf("bridge %q %w on VLAN %d (%s not a member)", master, ErrNoUplink, p.VLAN, strings.Join(offVLAN, ", "))
		}
		return nil, fmt.Errorf("bridge %q %w (every port matches %s)", master, ErrNoUplink, strings.Join(vmPorts, ", "))
	}
	return p, nil
}

// unusable says why the uplink name cannot carry announcements, "" when it
// can or when h does not know port states.
func unusable(h Host, name string) (string, error) {
	ps, ok := h.(PortStater)
	if !ok {
		return "", nil
	}
	st, err := ps.PortState(name)
	if errors.Is(err, ErrNotFound) {
		return "", nil // left the bridge since we listed it; the send will say
	}
	if err != nil {
		return "", err
	}
	return st.unusable(), nil
}

func matchAny(patterns []string, name string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}

func findPVID(vlans []VLAN) (uint16, bool) {
	for _, v := range vlans {
		if v.PVID {
			return v.ID, true
		}
	}
	return 0, false
}

func findVLAN(vlans []VLAN, id uint16) (VLAN, bool) {
	for _, v := range vlans {
		if v.ID == id {
			return v, true
		}
	}
	return VLAN{}, false
}
