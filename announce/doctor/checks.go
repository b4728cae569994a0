package doctor

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

type checker struct {
	h       *Host
	o       *Options
	skipped []Skipped
}

// skip records that check id could not look at object, and why.
func (c *checker) skip(id, object, reason string) {
	c.skipped = append(c.skipped, Skipped{ID: id, Object: object, Reason: reason})
}

// port returns a VM bridge's port, or records under check id that a
// partial copy of /sys lacks it.
func (c *checker) port(id string, br *Link, name string) *Link {
	l := c.h.Links[name]
	if l == nil {
		why := "not in /sys/class/net"
		if w, ok := c.h.Unread["sys/class/net/"+name]; ok {
			why = "/sys/class/net/" + name + ": " + w
		}
		c.skip(id, br.Name+"/"+name, "port listed in the bridge's brif/ but "+why)
	}
	return l
}

func (c *checker) isVMPort(name string) bool {
	for _, g := range c.o.VMPortGlobs {
		if ok, _ := filepath.Match(g, name); ok {
			return true
		}
	}
	return false
}

// vmBridges are the bridges carrying at least one VM port: the only ones
// whose quirks decide whether a migrated VM is reachable.
func (c *checker) vmBridges() []*Link {
	var out []*Link
	for _, l := range c.h.sortedLinks() {
		if l.Bridge == nil {
			continue
		}
		for _, p := range l.Bridge.Ports {
			if c.isVMPort(p) {
				out = append(out, l)
				break
			}
		}
	}
	return out
}

func (c *checker) vmPorts(br *Link) (vm, other []string) {
	for _, p := range br.Bridge.Ports {
		if c.isVMPort(p) {
			vm = append(vm, p)
		} else {
			other = append(other, p)
		}
	}
	return vm, other
}

// bondsBelow returns the bonds name is, or is stacked on (through bridges
// and VLANs), nearest first.
func (c *checker) bondsBelow(name string) []*Link {
	var out []*Link
	seen := map[string]bool{}
	var walk func(n string, depth int)
	walk = func(n string, depth int) {
		l := c.h.Links[n]
		// Depth bounds a corrupt tree whose lower_ links form a loop.
		if l == nil || seen[n] || depth > 8 {
			return
		}
		seen[n] = true
		if l.Bond != nil {
			out = append(out, l)
			return
		}
		for _, lo := range l.Lowers {
			if !c.isVMPort(lo) {
				walk(lo, depth+1)
			}
		}
	}
	walk(name, 0)
	return out
}

func secs(cs int) string {
	return (time.Duration(cs) * 10 * time.Millisecond).String()
}

func (c *checker) stpForwardDelay() []Finding {
	var out []Finding
	for _, br := range c.vmBridges() {
		b := br.Bridge
		if why, ok := br.unread("bridge/stp_state", "bridge/forward_delay"); ok {
			c.skip(CheckSTPForwardDelay, br.Name, why)
			continue
		}
		if b.STPState == 0 || b.ForwardDelay <= 0 {
			continue
		}
		kind := "kernel STP"
		if b.STPState == 2 {
			kind = "user-space STP (mstpd)"
		}
		vm, _ := c.vmPorts(br)
		var held []string
		for _, p := range vm {
			if l := c.h.Links[p]; l != nil && l.Port != nil && l.Unread["brport/state"] == "" && (l.Port.State == 1 || l.Port.State == 2) {
				held = append(held, p)
			}
		}
		detail := fmt.Sprintf("stp_state=%d (%s), forward_delay=%s: every port that joins spends %s listening and learning and drops all frames meanwhile; VM ports: %s",
			b.STPState, kind, secs(b.ForwardDelay), secs(2*b.ForwardDelay), strings.Join(vm, " "))
		if len(held) > 0 {
			detail += "; not forwarding right now: " + strings.Join(held, " ")
		}
		out = append(out, Finding{
			ID: CheckSTPForwardDelay, Object: br.Name, Severity: Error,
			Breaks: fmt.Sprintf("a VM arriving on %s is cut off for %s after its port joins; announcements sent in that window are dropped, so the switch keeps the old port until its MAC entry ages out", br.Name, secs(2*b.ForwardDelay)),
			Fix:    fmt.Sprintf("turn STP off on the VM bridge: ip link set %s type bridge stp_state 0 (ifupdown: bridge_stp off; libvirt network: <bridge stp='off'/>); if the bridge must run STP, run mstpd with VM ports as admin-edge ports", br.Name),
			Detail: detail,
		})
	}
	return out
}

// bondModeRisk says how a bridge on a bond in this mode goes wrong;
// severity Error when the mode is unsafe whatever the switch does.
// bondModeRisk says how a bridge on a bond in this mode goes wrong.
// Severity is Error when the mode breaks bridging whatever the switch does,
// Warning when a static LAG on the switch (invisible from here) makes it safe.
var bondModeRisk = map[string]struct {
	sev      Severity
	why, fix string
}{
	"balance-rr": {Warning, "round-robin sends a broadcast out of one member and, unless the switch ports form a static LAG, the switch floods it back in through the other",
		"keep balance-rr only if the switch ports form a static LAG (EtherChannel mode on); otherwise use active-backup, or 802.3ad with an LACP group on the switch"},
	"balance-xor": {Warning, "xor hashing needs the switch ports in a static LAG; without one the switch floods the bond's broadcasts back through the other member",
		"keep balance-xor only if the switch ports form a static LAG (EtherChannel mode on); otherwise use active-backup, or 802.3ad with an LACP group on the switch"},
	"broadcast": {Warning, "broadcast mode sends every frame on every member; without a static LAG the switch hands each copy back through the other member",
		"use active-backup (broadcast mode is only for special redundant fabrics, and then needs a static LAG on the switch)"},
	"balance-tlb": {Error, "transmit load balancing sends guest frames out of members whose received traffic the bond drops, so the switch learns guest MACs on ports that cannot deliver to them",
		"use active-backup, or 802.3ad with an LACP group on the switch; balance-tlb cannot carry a bridge safely"},
	"balance-alb": {Error, "adaptive load balancing also rewrites ARP to steer receive traffic per peer, which assumes the host owns every MAC and IP it answers for; bridged guests break that",
		"use active-backup, or 802.3ad with an LACP group on the switch; balance-alb cannot carry a bridge safely"},
}

func (c *checker) bridgeOnUnsafeBond() []Finding {
	var out []Finding
	for _, br := range c.vmBridges() {
		_, uplinks := c.vmPorts(br)
		for _, up := range uplinks {
			for _, bond := range c.bondsBelow(up) {
				if why, ok := bond.unread("bonding/mode"); ok {
					c.skip(CheckBridgeOnUnsafeBond, br.Name+"/"+bond.Name, why)
					continue
				}
				risk, bad := bondModeRisk[bond.Bond.Mode]
				if !bad {
					continue
				}
				via := ""
				if up != bond.Name {
					via = " via " + up
				}
				out = append(out, Finding{
					ID: CheckBridgeOnUnsafeBond, Object: br.Name + "/" + bond.Name, Severity: risk.sev,
					Breaks: fmt.Sprintf("%s learns guest MACs behind %s when the bond's own broadcasts, announcements included, come back in (kernel log: \"%s: received packet on %s with own address as source address\"), or the switch learns them on members that drop their traffic: frames for those VMs, just-migrated ones first, are lost", br.Name, bond.Name, br.Name, bond.Name),
					Fix:    strings.ReplaceAll(risk.fix, "use ", "put "+bond.Name+" in "),
					Detail: fmt.Sprintf("bridge %s%s sits on bond %s in mode %s (members %s): %s", br.Name, via, bond.Name, bond.Bond.Mode, strings.Join(bond.Bond.Members, " "), risk.why),
				})
			}
		}
	}
	return out
}

func (c *checker) jumboManagementBond() []Finding {
	mgmt, source := "", ""
	if v := c.h.Inventory["MANAGEMENT_INTERFACE"]; v != "" {
		mgmt, source = v, "MANAGEMENT_INTERFACE in /etc/xensource-inventory"
	} else if c.h.DefaultRoute != "" {
		mgmt, source = c.h.DefaultRoute, "default route"
	}
	l := c.h.Links[mgmt]
	if mgmt == "" {
		if why, ok := c.h.Unread["proc/net/route"]; ok {
			c.skip(CheckJumboManagementBond, "", "no management interface in /etc/xensource-inventory and no /proc/net/route: "+why)
		}
		return nil
	}
	if l == nil {
		c.skip(CheckJumboManagementBond, mgmt, "management interface "+mgmt+" (from "+source+") not in /sys/class/net")
		return nil
	}
	// Only XenServer's failure is known; elsewhere it is a risk, not an outage.
	sev := Warning
	if c.h.Inventory != nil {
		sev = Error
	}
	var out []Finding
	for _, bond := range c.bondsBelow(mgmt) {
		obj := mgmt
		if bond.Name != mgmt {
			obj = mgmt + "/" + bond.Name
		}
		if why, ok := l.unread("mtu"); ok {
			c.skip(CheckJumboManagementBond, obj, why)
			continue
		}
		if why, ok := bond.unread("mtu"); ok {
			c.skip(CheckJumboManagementBond, obj, why)
			continue
		}
		mtu := max(l.MTU, bond.MTU)
		if mtu <= 1500 {
			continue
		}
		out = append(out, Finding{
			ID: CheckJumboManagementBond, Object: obj, Severity: sev,
			Breaks: "the management network: XenServer hosts whose management interface was a jumbo-MTU bond failed to rejoin their pool after reboot, so they could take no migrations; any switch hop without jumbo frames silently drops the large frames of management TLS while ping still works",
			Fix:    "give the management interface MTU 1500 (XenServer: xe network-param-set uuid=<management network> MTU=1500, then reboot) and carry jumbo frames on a separate storage or VM network",
			Detail: fmt.Sprintf("management interface %s (from %s) is on bond %s (%s) with MTU %d (management interface MTU %d, bond MTU %d)", mgmt, source, bond.Name, bond.Bond.Mode, mtu, l.MTU, bond.MTU),
		})
	}
	return out
}

func (c *checker) vifMTUMismatch() []Finding {
	var out []Finding
	for _, br := range c.vmBridges() {
		vm, _ := c.vmPorts(br)
		for _, p := range vm {
			l := c.port(CheckVIFMTUMismatch, br, p)
			if l == nil {
				continue
			}
			why, ok := br.unread("mtu")
			if !ok {
				why, ok = l.unread("mtu")
			}
			if ok {
				c.skip(CheckVIFMTUMismatch, br.Name+"/"+p, why)
				continue
			}
			if l.MTU == br.MTU {
				continue
			}
			f := Finding{ID: CheckVIFMTUMismatch, Object: br.Name + "/" + p,
				Fix:    fmt.Sprintf("set the same MTU on the VM port and the bridge (ip link set %s mtu %d), and make the VM's NIC MTU match; for Xen, set the MTU on the network so vifs are created with it", p, br.MTU),
				Detail: fmt.Sprintf("%s has MTU %d, bridge %s has MTU %d", p, l.MTU, br.Name, br.MTU),
			}
			if l.MTU < br.MTU {
				f.Severity = Error
				f.Breaks = fmt.Sprintf("frames larger than %d bytes for the VM are dropped by the bridge without any ICMP, so ping and announcements work but TCP sessions with full-size segments stall", l.MTU)
			} else {
				f.Severity = Warning
				f.Breaks = fmt.Sprintf("if the VM uses its port's MTU, frames larger than the bridge's %d bytes are dropped on the way out, with the same stalls for the VM's peers", br.MTU)
			}
			out = append(out, f)
		}
	}
	return out
}

func (c *checker) fdbAgeing() []Finding {
	var out []Finding
	sw := c.o.SwitchAgeing
	for _, br := range c.vmBridges() {
		if why, ok := br.unread("bridge/ageing_time"); ok {
			c.skip(CheckFDBAgeing, br.Name, why)
			continue
		}
		age := time.Duration(br.Bridge.AgeingTime) * 10 * time.Millisecond
		f := Finding{ID: CheckFDBAgeing, Object: br.Name, Severity: Warning,
			Fix: fmt.Sprintf("set ageing_time near the switches' %s: ip link set %s type bridge ageing_time %d (centiseconds)", sw, br.Name, sw.Milliseconds()/10),
		}
		switch {
		case age == 0:
			f.Breaks = "the bridge keeps no MAC entries and floods every frame to every port like a hub: VMs receive each other's unicast traffic; stale entries cannot exist, so migrations are not delayed, but guests see traffic not meant for them"
			f.Detail = "ageing_time=0"
		case age > 2*sw:
			f.Breaks = fmt.Sprintf("a stale entry for a migrated guest, learned behind the uplink while the VM lived elsewhere, survives up to %s here: if the guest's announcement is lost, this host drops inbound traffic for it for that long, after the switch (%s) has long recovered", age, sw)
			f.Detail = fmt.Sprintf("ageing_time=%d (%s), switch default %s", br.Bridge.AgeingTime, age, sw)
		case age < sw/10:
			f.Breaks = fmt.Sprintf("entries for guests quiet for %s expire long before the switch's (%s), so frames for them are flooded to every VM port on %s; stale entries clear fast, which does not delay migrations, but the flooding costs bandwidth and exposes traffic to other VMs", age, sw, br.Name)
			f.Detail = fmt.Sprintf("ageing_time=%d (%s), switch default %s", br.Bridge.AgeingTime, age, sw)
		default:
			continue
		}
		out = append(out, f)
	}
	return out
}

func (c *checker) mldSnooping() []Finding {
	var out []Finding
	for _, br := range c.vmBridges() {
		b := br.Bridge
		if why, ok := br.unread("bridge/multicast_snooping", "bridge/multicast_querier"); ok {
			c.skip(CheckMLDSnooping, br.Name, why)
			continue
		}
		if b.MulticastSnooping == 0 || b.MulticastQuerier == 0 {
			continue
		}
		interval := secs(b.MulticastQueryInterval)
		if _, ok := br.unread("bridge/multicast_query_interval"); ok {
			interval = "unknown"
		}
		out = append(out, Finding{
			ID: CheckMLDSnooping, Object: br.Name, Severity: Warning,
			Breaks: fmt.Sprintf("IPv6 reachability of a VM just arrived on %s: neighbour solicitations for its addresses go to solicited-node multicast groups, which %s forwards only to ports that sent an MLD report; the guest reported on the old host and reports again only when queried, up to a query interval (%s) later", br.Name, br.Name, interval),
			Fix:    fmt.Sprintf("turn snooping off on the VM bridge (ip link set %s type bridge mcast_snooping 0), or its querier (mcast_querier 0) if no other querier is on the segment", br.Name),
			Detail: fmt.Sprintf("multicast_snooping=%d and multicast_querier=%d: with a querier present the bridge filters multicast by its MDB instead of flooding it", b.MulticastSnooping, b.MulticastQuerier),
		})
	}
	return out
}

func (c *checker) vifLearningOff() []Finding {
	var out []Finding
	for _, br := range c.vmBridges() {
		vm, _ := c.vmPorts(br)
		for _, p := range vm {
			l := c.port(CheckVIFLearningOff, br, p)
			if l == nil || l.Port == nil {
				continue
			}
			if why, ok := l.unread("brport/learning"); ok {
				c.skip(CheckVIFLearningOff, br.Name+"/"+p, why)
				continue
			}
			if l.Port.Learning != 0 {
				continue
			}
			out = append(out, Finding{
				ID: CheckVIFLearningOff, Object: br.Name + "/" + p, Severity: Warning,
				Breaks: fmt.Sprintf("%s never learns the guest's MAC on %s, so the guest's own frames and announcements cannot replace a stale entry pointing at the uplink: inbound traffic for a VM that just arrived is dropped here until that entry ages out", br.Name, p),
				Fix:    fmt.Sprintf("turn learning on (ip link set %s type bridge_slave learning on), unless a manager installs a static FDB entry for each guest MAC on its port (libvirt macTableManager='libvirt' does)", p),
				Detail: fmt.Sprintf("brport/learning=0 on %s", p),
			})
		}
	}
	return out
}

// nonLACPMembers maps each member of a bond not in 802.3ad mode to its bond.
func (c *checker) nonLACPMembers() map[string]*Link {
	m := map[string]*Link{}
	for _, l := range c.h.sortedLinks() {
		if l.Bond == nil || l.Bond.Mode == "802.3ad" {
			continue
		}
		if why, ok := l.unread("bonding/mode"); ok {
			c.skip(CheckLACPMismatch, l.Name, why)
			continue
		}
		for _, s := range l.Bond.Members {
			m[s] = l
		}
	}
	return m
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
