package lab

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/ovstest"
)

// ovsHost makes ns an Open vSwitch host: a private OVS, bridge Bridge on the
// userspace datapath (the kernel module is not available everywhere) or
// with OVSKernel the kernel's, and uplink up0 to the switch port swPort; on
// host B with OVSBond, bond0 of up0 and up1 (to swPort and swPort+"2").
func (l *Lab) ovsHost(ns *netlab.NS, swPort string) error {
	launch := ovstest.Launch
	if l.opts.OVSKernel {
		launch = ovstest.LaunchKernel
	}
	o, err := launch(ns)
	if err != nil {
		return fmt.Errorf("lab: Open vSwitch on %s: %w", ns.Name, err)
	}
	if ns == l.HostA {
		l.OVSA = o
	} else {
		l.OVSB = o
	}
	if err := o.AddBridgeErr(Bridge); err != nil {
		return err
	}
	if _, err := ns.Sh(fmt.Sprintf(`
		ip link add up0 type veth peer name %s netns %s
		ip link set up0 up`, swPort, l.Switch.Name)); err != nil {
		return err
	}
	if ns != l.HostB || l.opts.OVSBond == "" {
		_, err = o.VsctlErr("add-port", Bridge, "up0")
		return err
	}
	if _, err := ns.Sh(fmt.Sprintf(`
		ip link add up1 type veth peer name %s2 netns %s
		ip link set up1 up`, swPort, l.Switch.Name)); err != nil {
		return err
	}
	if _, err := o.VsctlErr("add-bond", Bridge, "bond0", "up0", "up1", "bond_mode="+l.opts.OVSBond); err != nil {
		return err
	}
	return l.switchPort(swPort+"2", false)
}

// WaitOVSBond waits until host B's OVS bond0 has both members enabled and
// an active member: before that, OVS drops the broadcasts host B must see
// (an SLB bond admits them only on its active member), and a member that
// ovs-vswitchd enables in the middle of a test moves traffic under it.
func (l *Lab) WaitOVSBond(timeout time.Duration) error {
	if l.OVSB == nil || l.opts.OVSBond == "" {
		return nil
	}
	end := time.Now().Add(timeout)
	for {
		out, err := l.OVSB.AppctlErr("bond/show", "bond0")
		if err == nil && strings.Contains(out, "member up0: enabled") && strings.Contains(out, "member up1: enabled") &&
			strings.Contains(out, "active member\n") {
			return nil
		}
		if time.Now().After(end) {
			return fmt.Errorf("lab: OVS bond0 did not enable both members within %v (%v):\n%s", timeout, err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ovsPlug creates a VM port as XenServer's vif-openvswitch does: the vif
// joins the bridge admin-up with external_ids:attached-mac, and has carrier
// only once the guest's end (peer, in the VM namespace) comes up.
func (l *Lab) ovsPlug(ns *netlab.NS, vif, peer string) error {
	o := l.ovsOf(ns)
	if ns == l.HostA {
		// The VM's one warm-up broadcast must reach host B, which the
		// switch floods to its ports only once their link watch has run.
		ports := []string{"pA", "pB"}
		if l.opts.OVSBond != "" {
			ports = append(ports, "pB2")
		}
		for _, p := range ports {
			if err := waitForwarding(l.Switch, p, 3*time.Second); err != nil {
				return err
			}
		}
	}
	if _, err := ns.Sh(fmt.Sprintf(`
		ip link add %[1]s type veth peer name %[2]s netns %[3]s
		ip link set %[1]s up`, vif, peer, l.VM.Name)); err != nil {
		return err
	}
	args := []string{"add-port", Bridge, vif}
	if l.opts.VLAN != 0 {
		args = append(args, fmt.Sprintf("tag=%d", l.opts.VLAN))
	}
	_, err := o.VsctlErr(append(args, "--", "set", "Interface", vif, "external_ids:attached-mac="+GuestMAC)...)
	return err
}

func (l *Lab) ovsOf(ns *netlab.NS) *ovstest.OVS {
	switch {
	case ns == l.HostA && l.OVSA != nil:
		return l.OVSA
	case ns == l.HostB && l.OVSB != nil:
		return l.OVSB
	}
	return nil
}

func (l *Lab) closeOVS() {
	for _, o := range []*ovstest.OVS{l.OVSA, l.OVSB} {
		if o != nil {
			o.Close()
		}
	}
}

// ovsFDBPort returns the interface OVS forwards mac to, "" if it has no entry.
func ovsFDBPort(o *ovstest.OVS, bridge, mac string) (string, error) {
	out, err := o.AppctlErr("fdb/show", bridge)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || !strings.EqualFold(f[2], mac) {
			continue
		}
		if _, err := strconv.Atoi(f[0]); err != nil {
			return f[0], nil // LOCAL
		}
		return o.VsctlErr("--bare", "--columns=name", "find", "Interface", "ofport="+f[0])
	}
	return "", nil
}

// AgentConfig returns base with what an agent on host B needs to reach its
// Open vSwitch, when the lab has one.
func (l *Lab) AgentConfig(base string) string {
	if l.OVSB == nil {
		return base
	}
	return base + fmt.Sprintf("ovs: {db: %q, rundir: %q}\n", l.OVSB.DBAddr(), l.OVSB.RunDir())
}
