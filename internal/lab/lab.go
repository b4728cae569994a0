// Package lab builds the migration lab in network namespaces: a switch (a
// learning Linux bridge with the 300 s ageing of a real switch), two
// hypervisor hosts each with a bridge and an uplink to the switch, a client
// behind the switch, and a silent VM that moves from host A to host B the way
// a Xen live migration moves it. `make lab` and the end-to-end tests share it.
package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/ovstest"
)

// Fixed identities: namespaces are private, so only their names need to be
// unique.
const (
	GuestMAC  = "52:54:00:12:34:56"
	GuestIP   = "10.0.0.10"
	GuestIP6  = "fd00::10"
	ClientIP  = "10.0.0.1"
	ClientMAC = "02:00:00:00:00:01"
	Bridge    = "xenbr0"
	SrcVif    = "vif1.0" // domid 1 on host A
	DstVif    = "vif2.0" // domid 2 on host B after the migration
)

// Options shape the topology.
type Options struct {
	// STPForwardDelay, when non-zero, turns STP on for host B's bridge.
	STPForwardDelay time.Duration
	// OVS builds hosts A and B on Open vSwitch bridges (userspace datapath,
	// a private ovsdb-server and ovs-vswitchd each) instead of Linux ones.
	OVS bool
	// OVSKernel puts those bridges on the kernel datapath (the openvswitch
	// module: the kernel VM has it, this host's kernel does not).
	OVSKernel bool
	// OVSBond, with OVS, makes host B's uplink an OVS bond "bond0" of up0
	// and up1 in this bond_mode (balance-slb is XenServer's default), each
	// member facing its own switch port (pB, pB2): SLB must not face a LAG.
	OVSBond string
	// VLAN, when non-zero, carries the VM network on this 802.1Q VLAN: the
	// switch filters VLANs (trunks to the hosts, an access port to the
	// client), OVS vifs get it as their tag, and Linux hosts use Layout.
	// Needs 8021q and vlan_filtering: the kernel VM.
	VLAN   uint16
	Layout VLANLayout
	// TrunkVLANs are more VLANs the switch's and hosts' trunks carry.
	TrunkVLANs []uint16
	// TrunkVif makes host B's vif (VLANFiltering) a trunk of VLAN and
	// TrunkVLANs, tagged, with no PVID.
	TrunkVif bool
	// Bond makes host B's uplink (a Linux bridge host) the bond "bond0" of
	// up0 and up1 in this mode (active-backup, balance-xor, 802.3ad,
	// balance-alb...). In balance-xor and 802.3ad the members face one
	// switch LAG "pB" (static, or LACP); otherwise pB and pB2. Needs the
	// bonding module: the kernel VM.
	Bond string
	// HostB, when set, is an existing namespace to build host B in, such
	// as a VM's root namespace (netlab.Attach) where systemd runs the
	// packaged unit. Close leaves it in place; the caller removes the
	// links the lab made there.
	HostB *netlab.NS
}

// Lab is a built topology.
type Lab struct {
	Switch, HostA, HostB, Client, VM *netlab.NS
	opts                             Options
	all                              []*netlab.NS
	// OVSA and OVSB are the hosts' Open vSwitch instances with Options.OVS.
	OVSA, OVSB *ovstest.OVS
}

// New builds the topology with the VM running on host A.
func New(opts Options) (*Lab, error) {
	l := &Lab{opts: opts}
	lab, err := l.build()
	if err != nil {
		l.Close()
	}
	return lab, err
}

func (l *Lab) build() (*Lab, error) {
	opts := l.opts
	for _, p := range []struct {
		ns   **netlab.NS
		role string
	}{{&l.Switch, "sw"}, {&l.HostA, "hosta"}, {&l.HostB, "hostb"}, {&l.Client, "client"}, {&l.VM, "vm"}} {
		if p.role == "hostb" && opts.HostB != nil {
			l.HostB = opts.HostB
			continue
		}
		n, err := netlab.NewNS(p.role)
		if err != nil {
			return nil, err
		}
		*p.ns = n
		l.all = append(l.all, n)
	}
	if _, err := l.Switch.Sh(l.switchScript()); err != nil {
		return nil, err
	}
	stp := ""
	if opts.STPForwardDelay > 0 {
		stp = fmt.Sprintf(" stp_state 1 forward_delay %d", opts.STPForwardDelay.Milliseconds()/10)
	}
	for _, h := range []struct {
		ns   *netlab.NS
		port string
		stp  string
	}{{l.HostA, "pA", ""}, {l.HostB, "pB", stp}} {
		if opts.OVS {
			if err := l.ovsHost(h.ns, h.port); err != nil {
				return nil, err
			}
		} else if opts.Bond != "" && h.ns == l.HostB {
			if err := l.bondHost(h.ns, h.stp); err != nil {
				return nil, err
			}
			if err := l.bondSwitchPorts(); err != nil {
				return nil, err
			}
		} else if opts.VLAN != 0 {
			if err := l.vlanHost(h.ns, h.port, h.stp); err != nil {
				return nil, err
			}
		} else if _, err := h.ns.Sh(fmt.Sprintf(`
			ip link add %[1]s type bridge%[2]s
			ip link set %[1]s up
			ip link add up0 type veth peer name %[3]s netns %[4]s
			ip link set up0 master %[1]s up`, Bridge, h.stp, h.port, l.Switch.Name)); err != nil {
			return nil, err
		}
		if err := l.switchPort(h.port, false); err != nil {
			return nil, err
		}
	}
	if _, err := l.Client.Sh(fmt.Sprintf(`
		ip link add eth0 address %s type veth peer name pC netns %s
		ip addr add %s/24 dev eth0
		ip link set eth0 up`, ClientMAC, l.Switch.Name, ClientIP)); err != nil {
		return nil, err
	}
	if err := l.switchPort("pC", true); err != nil {
		return nil, err
	}
	// The VM on host A: vif1.0 in the bridge, eth0 in the guest.
	if opts.OVS {
		if err := l.ovsPlug(l.HostA, SrcVif, "eth0"); err != nil {
			return nil, err
		}
	} else if err := l.linuxPlug(l.HostA, SrcVif, "eth0"); err != nil {
		return nil, err
	}
	if opts.Bond == "802.3ad" {
		// Neither side of a LAG passes frames until LACP agrees: host B
		// would miss the VM's broadcasts and never learn where it lives.
		if err := l.WaitLACP(60 * time.Second); err != nil {
			return nil, err
		}
	}
	if opts.OVSBond != "" {
		// Likewise an OVS bond admits broadcasts only on its active
		// member, which exists once ovs-vswitchd has seen a member's
		// carrier: under TCG on a loaded host that can lag the switch.
		if err := l.WaitOVSBond(60 * time.Second); err != nil {
			return nil, err
		}
	}
	if err := l.guestUp(false); err != nil {
		return nil, err
	}
	if opts.STPForwardDelay > 0 {
		// Host B's uplink listens and learns for twice the forward delay
		// and drops the VM's broadcasts meanwhile: host B would never learn
		// where the VM lives.
		if err := waitForwarding(l.HostB, "up0", 2*opts.STPForwardDelay+3*time.Second); err != nil {
			return nil, err
		}
	}
	// Everyone has met the VM: the client and the guest know each other's
	// MACs and keep them (a router's ARP cache outlives a migration; so does
	// the guest's), and host B's bridge has learned the VM's MAC behind its
	// uplink from the VM's broadcasts, as in the field.
	// New bridge ports forward only once the kernel's link watch has run
	// (up to a second after carrier), so the first pings may be lost.
	if _, err := l.VM.Run("ping", "-c", "1", "-w", "5", "-i", "0.1", ClientIP); err != nil {
		return nil, fmt.Errorf("lab warm-up ping: %w", err)
	}
	if _, err := l.VM.Sh(fmt.Sprintf("ip neigh replace %s lladdr %s dev eth0 nud permanent", ClientIP, ClientMAC)); err != nil {
		return nil, err
	}
	if _, err := l.Client.Sh(fmt.Sprintf("ip neigh replace %s lladdr %s dev eth0 nud permanent", GuestIP, GuestMAC)); err != nil {
		return nil, err
	}
	if port, _ := l.FDBPort(l.HostB, l.BridgeName(), GuestMAC); !l.isUplink(port) {
		return nil, fmt.Errorf("lab: host B did not learn the guest MAC behind its uplink (got %q)", port)
	}
	return l, nil
}

// waitForwarding waits for a bridge port to reach STP forwarding (3).
func waitForwarding(ns *netlab.NS, port string, timeout time.Duration) error {
	end := time.Now().Add(timeout)
	for {
		st, err := ns.Run("cat", "/sys/class/net/"+port+"/brport/state")
		if err == nil && st == "3" {
			return nil
		}
		if time.Now().After(end) {
			return fmt.Errorf("lab: %s did not reach STP forwarding within %v (state %q, %v)", port, timeout, st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// guestUp configures the guest's eth0: guest MAC and IP, IPv6 off and no
// gratuitous ARP, so it sends nothing on its own: a silent VM.
// After a migration the guest keeps its ARP cache (knownPeer).
func (l *Lab) guestUp(knownPeer bool) error {
	script := fmt.Sprintf(`
		sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
		sysctl -qw net.ipv4.conf.all.arp_notify=0
		ip link set eth0 address %s
		ip addr add %s/24 dev eth0
		ip link set eth0 up`, GuestMAC, GuestIP)
	if knownPeer {
		script += fmt.Sprintf("\nip neigh replace %s lladdr %s dev eth0 nud permanent", ClientIP, ClientMAC)
	}
	_, err := l.VM.Sh(script)
	return err
}

// PlugDestination does what XenServer does before the source VM pauses: the
// destination vif exists, sits in the bridge and is admin-up, but has no
// carrier because no guest is connected to it yet.
func (l *Lab) PlugDestination() error {
	if l.opts.OVS {
		return l.ovsPlug(l.HostB, DstVif, "ethnew")
	}
	return l.linuxPlug(l.HostB, DstVif, "ethnew")
}

// Resume ends the migration: the source domain is destroyed (its vif goes
// away) and the guest's netfront connects on host B, which raises carrier on
// the destination vif. The guest keeps its MAC, address and ARP cache, and
// sends nothing. One `ip -batch` keeps the switch-over to about a millisecond,
// so the outage measured is the network's, not the lab's. The old link is
// only taken down in the switch-over and deleted after it: deleting a veth
// waits for RCU grace periods, 10-40 ms on a loaded host, which would count
// as outage.
func (l *Lab) Resume() error {
	batch := fmt.Sprintf(`link set eth0 down
link set eth0 name ethold
link set ethnew name eth0
link set eth0 address %s
addr add %s/24 dev eth0
link set eth0 up
neigh replace %s lladdr %s dev eth0 nud permanent
link del ethold
`, GuestMAC, GuestIP, ClientIP, ClientMAC)
	cmd := l.VM.Cmd("ip", "-batch", "-")
	cmd.Stdin = strings.NewReader(batch)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("resume: %v: %s", err, out)
	}
	return nil
}

// Close removes every namespace.
func (l *Lab) Close() {
	l.closeOVS()
	for _, n := range l.all {
		n.Close()
	}
}

var fdbRe = regexp.MustCompile(`^([0-9a-f:]{17}) dev (\S+)`)

// FDBPort returns the port a bridge forwards mac to, "" if it has no entry.
func (l *Lab) FDBPort(ns *netlab.NS, bridge, mac string) (string, error) {
	if o := l.ovsOf(ns); o != nil {
		return ovsFDBPort(o, bridge, mac)
	}
	out, err := ns.Run("bridge", "fdb", "show", "br", bridge)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(out, "\n") {
		m := fdbRe.FindStringSubmatch(line)
		if m != nil && m[1] == strings.ToLower(mac) && !strings.Contains(line, "permanent") {
			return m[2], nil
		}
	}
	return "", nil
}

// SwitchPort says where the switch thinks the guest lives.
func (l *Lab) SwitchPort() string {
	p, err := l.FDBPort(l.Switch, "sw", GuestMAC)
	if err != nil {
		return "error: " + err.Error()
	}
	switch p {
	case "pA":
		return "pA (host A, stale)"
	case "pB":
		return "pB (host B)"
	case "pB2":
		return "pB2 (host B, second bond member)"
	case "":
		return "unknown (flooding)"
	}
	return p
}

// Pinger pings the guest from the client every interval and records replies.
type Pinger struct {
	cmd      *exec.Cmd
	interval time.Duration
	replies  chan reply
	done     chan struct{}
	sent     int
	got      []reply
}

type reply struct {
	seq int
	at  time.Time
}

var replyRe = regexp.MustCompile(`^\[(\d+)\.(\d+)\].*icmp_seq=(\d+)`)

// StartPing starts `ping -D` from the client: a real ICMP peer, whose
// per-reply timestamps give the outage.
func (l *Lab) StartPing(interval time.Duration, count int) (*Pinger, error) {
	p := &Pinger{interval: interval, replies: make(chan reply, count+16), done: make(chan struct{}), sent: count}
	p.cmd = l.Client.Cmd("ping", "-n", "-D", "-i", fmt.Sprintf("%.3f", interval.Seconds()), "-W", "1", "-c", strconv.Itoa(count), GuestIP)
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			m := replyRe.FindStringSubmatch(sc.Text())
			if m == nil {
				continue
			}
			sec, _ := strconv.ParseInt(m[1], 10, 64)
			usec, _ := strconv.ParseInt((m[2] + "000000")[:6], 10, 64)
			seq, _ := strconv.Atoi(m[3])
			p.got = append(p.got, reply{seq, time.Unix(sec, usec*1000)})
		}
	}()
	return p, nil
}

// Result summarises what the client saw.
type Result struct {
	Sent   int           `json:"sent"`
	Lost   int           `json:"lost"`
	Outage time.Duration `json:"outage_ns"` // longest time between two consecutive replies, less one interval
	Missed []int         `json:"-"`
	// Ongoing: the guest was still unreachable when pinging stopped.
	Ongoing bool `json:"ongoing"`
}

// Wait waits for ping to finish and summarises.
func (p *Pinger) Wait(ctx context.Context) (Result, error) {
	errc := make(chan error, 1)
	go func() { <-p.done; errc <- p.cmd.Wait() }()
	select {
	case <-ctx.Done():
		p.cmd.Process.Kill()
		<-errc
	case <-errc:
	}
	seen := map[int]bool{}
	for _, r := range p.got {
		seen[r.seq] = true
	}
	res := Result{Sent: p.sent}
	for s := 1; s <= p.sent; s++ {
		if !seen[s] {
			res.Lost++
			res.Missed = append(res.Missed, s)
		}
	}
	// The outage is the longest run of lost pings: a run still going at
	// the end counts too, which reply timestamps alone would miss.
	run, worst := 0, 0
	for s := 1; s <= p.sent; s++ {
		if seen[s] {
			run = 0
			continue
		}
		run++
		worst = max(worst, run)
	}
	res.Outage = time.Duration(worst) * p.interval
	res.Ongoing = p.sent > 0 && !seen[p.sent]
	return res, nil
}

// Report is one scenario's outcome.
type Report struct {
	Scenario string `json:"scenario"`
	Result
	SwitchPort string `json:"switch_port"`
	HostBPort  string `json:"host_b_bridge_port"`
}

func (r Report) String() string {
	outage := r.Outage.String()
	if r.Ongoing {
		// The switch keeps the stale entry for its 300 s ageing time.
		outage = "≥" + r.Outage.String() + ", ongoing"
	}
	return fmt.Sprintf("%-22s sent %4d  lost %4d (%5.1f%%)  outage %-16s switch: guest MAC on %-20s host B bridge: guest MAC on %s",
		r.Scenario, r.Sent, r.Lost, 100*float64(r.Lost)/math.Max(1, float64(r.Sent)), outage, r.SwitchPort, orNone(r.HostBPort))
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// JSON renders the report for scripts.
func (r Report) JSON() string {
	b, _ := json.Marshal(r)
	return string(b)
}
