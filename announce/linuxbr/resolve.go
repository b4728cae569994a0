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
	// nor the VM port is ever among them. Empty for a trunk VM port without
	// a PVID, whose guest sends nothing untagged.
	Uplinks []Uplink
	// Tagged are the VLANs a VM port of a VLAN-filtering bridge carries
	// tagged besides its PVID (a trunk into the guest, whose VLAN
	// subinterfaces share its MAC), each with the uplinks that carry it;
	// VLANs no uplink carries are left out. At most MaxTaggedVLANs.
	Tagged []TaggedVLAN
	// TaggedOmitted counts the port's tagged VLANs beyond MaxTaggedVLANs.
	TaggedOmitted int
	// Unusable are the other uplinks on the PVID, down or not forwarding
	// (STP blocking, listening, learning): a frame written on one would
	// teach the switch behind it a path the bridge does not use. The FDB
	// repair still counts them as uplinks.
	Unusable []UnusableUplink
}

// TaggedVLAN is one VLAN a trunk VM port carries tagged.
type TaggedVLAN struct {
	VLAN    uint16
	Uplinks []Uplink
}

// UnusableUplink is an uplink left out of a Path, and why.
type UnusableUplink struct {
	Uplink
	Why string // "no carrier", "STP blocking", ...
}

// MaxTaggedVLANs bounds the VLANs announced on for one trunk VM port: a
// port carrying VLANs 2-4094 would otherwise cost 4093 frames a round.
const MaxTaggedVLANs = 64

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
	hasPVID := !filtering
	var tagged []uint16
	if filtering {
		vlans, err := h.PortVLANs(port)
		if err != nil {
			return nil, err
		}
		pvid, ok := findPVID(vlans)
		tagged = taggedVLANs(vlans, pvid, ok)
		if !ok && len(tagged) == 0 {
			return nil, ifErrf(port, ErrNoPVID, " on VLAN-filtering bridge %q: the bridge drops the guest's untagged frames", master)
		}
		p.VLAN, hasPVID = pvid, ok
		if len(tagged) > MaxTaggedVLANs {
			p.TaggedOmitted = len(tagged) - MaxTaggedVLANs
			tagged = tagged[:MaxTaggedVLANs]
		}
	}

	ports, err := h.BridgePorts(master)
	if err != nil {
		return nil, err
	}
	sort.Strings(ports)
	type candidate struct {
		Link
		vlans   []VLAN
		vlanDev bool
		why     string // why it cannot carry announcements now, "" if it can
	}
	var cands []candidate
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
		c := candidate{Link: l}
		if filtering {
			if c.vlans, err = h.PortVLANs(name); err != nil {
				return nil, err
			}
			if c.vlanDev, err = h.IsVLANDevice(name); err != nil {
				return nil, err
			}
		}
		if c.why, err = unusable(h, name); err != nil {
			return nil, err
		}
		cands = append(cands, c)
	}
	// uplinksOn lists the candidates carrying vid, each with the tag the
	// sender must add there; those that cannot forward now go to bad.
	uplinksOn := func(vid uint16) (ups []Uplink, off []string, bad []UnusableUplink) {
		for _, c := range cands {
			u := Uplink{Link: c.Link}
			if filtering {
				v, ok := findVLAN(c.vlans, vid)
				if !ok {
					off = append(off, c.Name)
					continue
				}
				if !v.Untagged && !c.vlanDev {
					u.VLAN = vid
				}
			}
			if c.why != "" {
				bad = append(bad, UnusableUplink{Uplink: u, Why: c.why})
				continue
			}
			ups = append(ups, u)
		}
		return ups, off, bad
	}
	for _, vid := range tagged {
		if ups, _, _ := uplinksOn(vid); len(ups) > 0 {
			p.Tagged = append(p.Tagged, TaggedVLAN{VLAN: vid, Uplinks: ups})
		}
	}
	if !hasPVID {
		if len(p.Tagged) == 0 {
			return nil, fmt.Errorf("bridge %q %w on any of %s's VLANs %v", master, ErrNoUplink, port, tagged)
		}
		return p, nil
	}
	var offVLAN []string
	p.Uplinks, offVLAN, p.Unusable = uplinksOn(p.VLAN)
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

// taggedVLANs are the VLANs a VM port carries tagged, besides its PVID:
// the guest sends on them tagged. A VLAN the port only sends untagged,
// without being its PVID, takes nothing from the guest and is left out.
func taggedVLANs(vlans []VLAN, pvid uint16, hasPVID bool) []uint16 {
	var out []uint16
	for _, v := range vlans {
		if !v.Untagged && !(hasPVID && v.ID == pvid) && v.ID > 0 && v.ID < 4095 {
			out = append(out, v.ID)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func findVLAN(vlans []VLAN, id uint16) (VLAN, bool) {
	for _, v := range vlans {
		if v.ID == id {
			return v, true
		}
	}
	return VLAN{}, false
}
