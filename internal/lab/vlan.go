package lab

import (
	"fmt"

	"github.com/selfannounce/selfannounce/internal/netlab"
)

// VLANLayout is how a Linux-bridge host carries the VM network's VLAN
// (Options.VLAN) on its uplink up0.
type VLANLayout int

const (
	// VLANDevice is XenServer's layout: bridge xapi1 bridges the 802.1Q
	// device up0.<VLAN> and the vifs, and no bridge filters VLANs; the VLAN
	// device adds the tag.
	VLANDevice VLANLayout = iota
	// VLANFiltering is one vlan_filtering bridge (xenbr0): the vifs have
	// the VLAN as untagged PVID, the uplink carries it tagged.
	VLANFiltering
)

// VLANBridge is the bridge of the VLANDevice layout, as XAPI names it.
const VLANBridge = "xapi1"

// BridgeName is the hosts' bridge: Bridge, or VLANBridge in the
// VLANDevice layout.
func (l *Lab) BridgeName() string {
	if l.opts.VLAN != 0 && !l.opts.OVS && l.opts.Layout == VLANDevice {
		return VLANBridge
	}
	return Bridge
}

// switchScript creates the switch: with a VLAN, a VLAN-aware bridge whose
// host ports are trunks and whose client port is an access port, so an
// announcement on the wrong VLAN (or untagged) teaches it nothing, as on a
// real switch.
func (l *Lab) switchScript() string {
	filter := ""
	if l.opts.VLAN != 0 {
		filter = " vlan_filtering 1"
	}
	return fmt.Sprintf(`
		ip link add sw type bridge ageing_time 30000%s
		ip link set sw up`, filter)
}

// switchPort enslaves port to the switch: a trunk of Options.VLAN (and
// TrunkVLANs) for a host, the VLAN untagged for the client.
func (l *Lab) switchPort(port string, access bool) error {
	script := fmt.Sprintf("ip link set %s master sw up", port)
	if v := l.opts.VLAN; v != 0 {
		script += fmt.Sprintf("\nbridge vlan del dev %s vid 1", port)
		if access {
			script += fmt.Sprintf("\nbridge vlan add dev %s vid %d pvid untagged", port, v)
		} else {
			for _, id := range append([]uint16{v}, l.opts.TrunkVLANs...) {
				script += fmt.Sprintf("\nbridge vlan add dev %s vid %d", port, id)
			}
		}
	}
	_, err := l.Switch.Sh(script)
	return err
}

// vlanHost builds a Linux-bridge host whose uplink up0 (to switch port
// swPort) carries Options.VLAN tagged, in Options.Layout.
func (l *Lab) vlanHost(ns *netlab.NS, swPort, stp string) error {
	v := l.opts.VLAN
	script := fmt.Sprintf(`
		ip link add up0 type veth peer name %s netns %s
		ip link set up0 up`, swPort, l.Switch.Name)
	switch l.opts.Layout {
	case VLANDevice:
		script += fmt.Sprintf(`
		ip link add link up0 name up0.%[1]d type vlan id %[1]d
		ip link add %[2]s type bridge%[3]s
		ip link set %[2]s up
		ip link set up0.%[1]d master %[2]s up`, v, VLANBridge, stp)
	case VLANFiltering:
		script += fmt.Sprintf(`
		ip link add %[2]s type bridge vlan_filtering 1%[3]s
		ip link set %[2]s up
		ip link set up0 master %[2]s
		bridge vlan del dev up0 vid 1`, v, Bridge, stp)
		for _, id := range append([]uint16{v}, l.opts.TrunkVLANs...) {
			script += fmt.Sprintf("\n\t\tbridge vlan add dev up0 vid %d", id)
		}
	default:
		return fmt.Errorf("lab: unknown VLAN layout %d", l.opts.Layout)
	}
	_, err := ns.Sh(script)
	return err
}

// linuxPlug creates a vif on the host's Linux bridge, admin-up, its peer in
// the VM namespace. In the VLANFiltering layout the vif gets the VLAN as
// untagged PVID, or, when it is host B's vif and Options.TrunkVif is set,
// Options.VLAN and TrunkVLANs tagged with no PVID: a trunk into the guest.
func (l *Lab) linuxPlug(ns *netlab.NS, vif, peer string) error {
	br := l.BridgeName()
	script := fmt.Sprintf(`
		ip link add %[1]s type veth peer name %[2]s netns %[3]s
		ip link set %[1]s master %[4]s up`, vif, peer, l.VM.Name, br)
	if v := l.opts.VLAN; v != 0 && l.opts.Layout == VLANFiltering {
		script += fmt.Sprintf("\n\t\tbridge vlan del dev %s vid 1", vif)
		if ns == l.HostB && l.opts.TrunkVif {
			for _, id := range append([]uint16{v}, l.opts.TrunkVLANs...) {
				script += fmt.Sprintf("\n\t\tbridge vlan add dev %s vid %d", vif, id)
			}
		} else {
			script += fmt.Sprintf("\n\t\tbridge vlan add dev %s vid %d pvid untagged", vif, v)
		}
	}
	_, err := ns.Sh(script)
	return err
}

// isUplink says port is host B's uplink as its bridge's FDB names it.
func (l *Lab) isUplink(port string) bool {
	switch {
	case !l.opts.OVS && l.opts.Bond != "" && l.opts.VLAN != 0 && l.opts.Layout == VLANDevice:
		return port == fmt.Sprintf("%s.%d", BondName, l.opts.VLAN)
	case !l.opts.OVS && l.opts.Bond != "":
		return port == BondName
	case l.opts.OVS && l.opts.OVSBond != "":
		return port == "up0" || port == "up1"
	case !l.opts.OVS && l.opts.VLAN != 0 && l.opts.Layout == VLANDevice:
		return port == fmt.Sprintf("up0.%d", l.opts.VLAN)
	}
	return port == "up0"
}

// bondBridge is the bridge part of bondHost's script: bond0 in xenbr0; with
// a VLAN, XenServer's bond0.<VLAN> in xapi1 (VLANDevice), or bond0 a trunk
// of the vlan_filtering xenbr0.
func (l *Lab) bondBridge(stp string) string {
	v := l.opts.VLAN
	switch {
	case v != 0 && l.opts.Layout == VLANDevice:
		return fmt.Sprintf(`ip link set %[1]s up
		ip link add link %[1]s name %[1]s.%[2]d type vlan id %[2]d
		ip link add %[3]s type bridge%[4]s
		ip link set %[3]s up
		ip link set %[1]s.%[2]d master %[3]s up`, BondName, v, VLANBridge, stp)
	case v != 0 && l.opts.Layout == VLANFiltering:
		s := fmt.Sprintf(`ip link add %[2]s type bridge vlan_filtering 1%[3]s
		ip link set %[2]s up
		ip link set %[1]s master %[2]s up
		bridge vlan del dev %[1]s vid 1`, BondName, Bridge, stp)
		for _, id := range append([]uint16{v}, l.opts.TrunkVLANs...) {
			s += fmt.Sprintf("\n\t\tbridge vlan add dev %s vid %d", BondName, id)
		}
		return s
	}
	return fmt.Sprintf(`ip link add %[2]s type bridge%[3]s
		ip link set %[2]s up
		ip link set %[1]s master %[2]s up`, BondName, Bridge, stp)
}
