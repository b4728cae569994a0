package lab

import (
	"fmt"
	"strings"
	"time"

	"github.com/selfannounce/selfannounce/internal/netlab"
)

// BondName is host B's bonded uplink with Options.Bond.
const BondName = "bond0"

// bondLAG says the switch must see the bond's members as one logical port:
// a LAG, static for balance-xor, LACP for 802.3ad. The other modes face
// independent switch ports, as operators cable them.
func bondLAG(mode string) bool { return mode == "balance-xor" || mode == "802.3ad" }

// BondPorts are the switch ports host B's bond members face: one LAG port
// "pB" (its members pBm0, pBm1) in the LAG modes, pB and pB2 otherwise.
// The member up0 faces the first, up1 the second.
func (l *Lab) BondPorts() (lag string, members [2]string) {
	if bondLAG(l.opts.Bond) {
		return "pB", [2]string{"pBm0", "pBm1"}
	}
	return "", [2]string{"pB", "pB2"}
}

// bondHost builds host B with Options.Bond: bond0 of up0 and up1 in that
// mode, under the Linux bridge. up0 is the primary in active-backup, so the
// active member is known. The switch's side is a bond of the same kind
// for the LAG modes, so 802.3ad really negotiates LACP.
func (l *Lab) bondHost(ns *netlab.NS, stp string) error {
	mode := l.opts.Bond
	lag, m := l.BondPorts()
	extra := ""
	switch mode {
	case "active-backup":
		extra = " primary up0"
	case "802.3ad":
		extra = " lacp_rate fast"
	}
	if _, err := ns.Sh(fmt.Sprintf(`
		ip link add %[1]s type bond mode %[2]s miimon 100
		ip link add up0 type veth peer name %[3]s netns %[4]s
		ip link add up1 type veth peer name %[5]s netns %[4]s
		ip link set up0 master %[1]s
		ip link set up1 master %[1]s
		%[6]s
		%[7]s
		ip link set up0 up
		ip link set up1 up`, BondName, mode, m[0], l.Switch.Name, m[1], bondOpts(BondName, extra), l.bondBridge(stp))); err != nil {
		return err
	}
	if lag != "" {
		swExtra := ""
		if mode == "802.3ad" {
			swExtra = " lacp_rate fast"
		}
		// Named like the plain port, so the switch's FDB says pB for host B.
		if _, err := l.Switch.Sh(fmt.Sprintf(`
			ip link add %[1]s type bond mode %[2]s miimon 100
			%[5]s
			ip link set %[3]s master %[1]s
			ip link set %[4]s master %[1]s
			ip link set %[3]s up
			ip link set %[4]s up`, lag, mode, m[0], m[1], bondOpts(lag, swExtra))); err != nil {
			return err
		}
	}
	return nil
}

func bondOpts(bond, opts string) string {
	if opts == "" {
		return ""
	}
	var lines []string
	f := strings.Fields(opts)
	for i := 0; i+1 < len(f); i += 2 {
		lines = append(lines, fmt.Sprintf("ip link set %s type bond %s %s", bond, f[i], f[i+1]))
	}
	return strings.Join(lines, "\n\t\t")
}

// bondSwitchPorts enslaves the independent member ports to the switch (the
// LAG port, like any host port, is enslaved by build).
func (l *Lab) bondSwitchPorts() error {
	if lag, m := l.BondPorts(); lag == "" {
		return l.switchPort(m[1], false)
	}
	return nil
}

// WaitLACP waits until host B's 802.3ad bond and the switch's agree: both
// members in one aggregator, with the switch as partner.
func (l *Lab) WaitLACP(timeout time.Duration) error {
	end := time.Now().Add(timeout)
	for {
		n, _ := l.HostB.Run("cat", "/sys/class/net/"+BondName+"/bonding/ad_num_ports")
		p, _ := l.HostB.Run("cat", "/sys/class/net/"+BondName+"/bonding/ad_partner_mac")
		if n == "2" && p != "" && p != "00:00:00:00:00:00" {
			return nil
		}
		if time.Now().After(end) {
			return fmt.Errorf("lab: LACP did not negotiate within %v (ports in the aggregator %q, partner %q)", timeout, n, p)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ActiveMember is the member bond0 sends on in active-backup and
// balance-alb ("" in the other modes).
func (l *Lab) ActiveMember() string {
	s, _ := l.HostB.Run("cat", "/sys/class/net/"+BondName+"/bonding/active_slave")
	return s
}
