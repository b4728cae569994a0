package lab

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/packet"

	"github.com/selfannounce/selfannounce/internal/netlab"
)

// The Xen layout's names in dom0. A real Xen dom0 plugs vifs into bridges
// of its root namespace, so both "hosts" are dom0 itself: two bridges, each
// with its own uplink into the switch, the way two hosts would have.
const (
	XenBridgeA = "xenbrA"
	XenBridgeB = "xenbrB"
	XenUplinkA = "upA" // xenbrA's uplink, switch port pA
	XenUplinkB = "upB" // xenbrB's uplink, switch port pB
)

// NewXen builds the switch and the client around a Xen dom0: the switch (a
// Linux bridge with 300 s ageing) and the client in namespaces, and in the
// calling process's own namespace (dom0's) the bridges xenbrA and xenbrB
// with their uplinks. HostA and HostB are both dom0's namespace, attached
// under a unique name so the namespace helpers reach it. The VM is a real
// Xen guest the caller creates; l.VM stays nil.
func NewXen() (*XenLab, error) {
	l := &XenLab{Lab: &Lab{}}
	err := l.build()
	if err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// XenLab is the Xen layout: a Lab whose hosts are dom0.
type XenLab struct{ *Lab }

func (l *XenLab) build() error {
	dom0 := &netlab.NS{Name: netlab.UniqueName("dom0")}
	if out, err := runHost("ip", "netns", "attach", dom0.Name, "1"); err != nil {
		return fmt.Errorf("ip netns attach %s 1: %v: %s", dom0.Name, err, out)
	}
	l.all = append(l.all, dom0)
	l.HostA, l.HostB = dom0, dom0
	for _, p := range []struct {
		ns   **netlab.NS
		role string
	}{{&l.Switch, "sw"}, {&l.Client, "client"}} {
		n, err := netlab.NewNS(p.role)
		if err != nil {
			return err
		}
		*p.ns = n
		l.all = append(l.all, n)
	}
	if _, err := l.Switch.Sh(`
		ip link add sw type bridge ageing_time 30000
		ip link set sw up`); err != nil {
		return err
	}
	for _, h := range []struct{ br, up, port string }{{XenBridgeA, XenUplinkA, "pA"}, {XenBridgeB, XenUplinkB, "pB"}} {
		if _, err := dom0.Sh(fmt.Sprintf(`
			ip link add %[1]s type bridge
			ip link set %[1]s up
			ip link add %[2]s type veth peer name %[3]s netns %[4]s
			ip link set %[2]s master %[1]s up`, h.br, h.up, h.port, l.Switch.Name)); err != nil {
			return err
		}
		if _, err := l.Switch.Sh(fmt.Sprintf("ip link set %s master sw up", h.port)); err != nil {
			return err
		}
	}
	if _, err := l.Client.Sh(fmt.Sprintf(`
		ip link add eth0 address %s type veth peer name pC netns %s
		ip addr add %s/24 dev eth0
		ip link set eth0 up
		ip neigh replace %s lladdr %s dev eth0 nud permanent`, ClientMAC, l.Switch.Name, ClientIP, GuestIP, GuestMAC)); err != nil {
		return err
	}
	_, err := l.Switch.Sh("ip link set pC master sw up")
	return err
}

// Close removes the namespaces and what NewXen put in dom0's own one.
func (l *XenLab) Close() {
	for _, d := range []string{XenUplinkA, XenUplinkB, XenBridgeA, XenBridgeB} {
		runHost("ip", "link", "del", d)
	}
	l.Lab.Close()
}

// XenUplink is the uplink of a Xen layout bridge.
func XenUplink(bridge string) string {
	if bridge == XenBridgeA {
		return XenUplinkA
	}
	return XenUplinkB
}

// XenMeet puts the network in the state a migration finds in the field:
// the switch has learned the guest's MAC behind the port of bridge (where
// the guest lives now), and the other bridge behind its uplink, as the
// guest's broadcasts would have taught them. A silent guest sends none, so
// one broadcast with the guest's MAC goes out of bridge's uplink, past the
// bridge itself. Its ethertype (IEEE local experimental 0x88b5) is no
// announcement, so it never counts as one.
func (l *XenLab) Meet(bridge string) error {
	mac, _ := net.ParseMAC(GuestMAC)
	f := make([]byte, 60)
	copy(f, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:], mac)
	f[12], f[13] = 0x88, 0xb5
	copy(f[14:], "selfannounce lab: the guest was here")
	if err := injectFrame(l.HostA, XenUplink(bridge), f); err != nil {
		return err
	}
	other := XenBridgeB
	if bridge == XenBridgeB {
		other = XenBridgeA
	}
	// Learning happens in the receive softirq, a moment after the write.
	for i := 0; ; i++ {
		sp, _ := l.FDBPort(l.Switch, "sw", GuestMAC)
		op, _ := l.FDBPort(l.HostA, other, GuestMAC)
		if sp == "p"+strings.TrimPrefix(XenUplink(bridge), "up") && op == XenUplink(other) {
			return nil
		}
		if i == 50 {
			return fmt.Errorf("lab: after a broadcast from the guest MAC out of %s, the switch has it on %q and %s on %q", XenUplink(bridge), sp, other, op)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// injectFrame writes one frame on ifname inside ns.
func injectFrame(ns *netlab.NS, ifname string, f []byte) error {
	return ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		c, err := packet.Listen(ifi, packet.Raw, 0, nil)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.WriteTo(f, &packet.Addr{HardwareAddr: net.HardwareAddr(f[:6])})
		return err
	})
}

// runHost runs a command in the caller's own namespace.
func runHost(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// OpenPinger pings the guest from the client until stopped: a Xen
// migration takes as long as it takes (tens of seconds under TCG), so the
// count is not known up front. `ping -O` reports every unanswered request,
// so sent and lost come from ping itself.
type OpenPinger struct {
	cmd      *exec.Cmd
	interval time.Duration
	done     chan struct{}
	mu       sync.Mutex
	answered map[int]bool
	maxSeq   int
}

var (
	openReplyRe = regexp.MustCompile(`icmp_seq=(\d+) ttl=`)
	noAnswerRe  = regexp.MustCompile(`no answer yet for icmp_seq=(\d+)`)
)

// StartOpenPing starts pinging the guest from the client every interval.
func (l *Lab) StartOpenPing(interval time.Duration) (*OpenPinger, error) {
	p := &OpenPinger{interval: interval, done: make(chan struct{}), answered: map[int]bool{}}
	p.cmd = l.Client.Cmd("ping", "-n", "-O", "-i", fmt.Sprintf("%.3f", interval.Seconds()), "-W", "1", GuestIP)
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
			line := sc.Text()
			m := openReplyRe.FindStringSubmatch(line)
			ok := m != nil
			if m == nil {
				m = noAnswerRe.FindStringSubmatch(line)
			}
			if m == nil {
				continue
			}
			seq, _ := strconv.Atoi(m[1])
			p.mu.Lock()
			p.maxSeq = max(p.maxSeq, seq)
			if ok {
				p.answered[seq] = true
			}
			p.mu.Unlock()
		}
	}()
	return p, nil
}

// Answered says how many of the last n requests were answered.
func (p *OpenPinger) Answered(n int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	got := 0
	for s := p.maxSeq - n + 1; s <= p.maxSeq; s++ {
		if p.answered[s] {
			got++
		}
	}
	return got
}

// Stop stops ping and summarises, as Pinger.Wait does. Requests still
// within their 1 s wait when it stops are not counted.
func (p *OpenPinger) Stop() Result {
	p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	p.cmd.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	res := Result{Sent: p.maxSeq}
	run, worst := 0, 0
	for s := 1; s <= p.maxSeq; s++ {
		if p.answered[s] {
			run = 0
			continue
		}
		res.Lost++
		res.Missed = append(res.Missed, s)
		run++
		worst = max(worst, run)
	}
	res.Outage = time.Duration(worst) * p.interval
	res.Ongoing = p.maxSeq > 0 && !p.answered[p.maxSeq]
	return res
}

// XenReport is the lab's report line for a Xen migration to bridge to.
func (l *XenLab) XenReport(name string, res Result, to string) Report {
	hb, _ := l.FDBPort(l.HostB, to, GuestMAC)
	sp, err := l.FDBPort(l.Switch, "sw", GuestMAC)
	want := "p" + strings.TrimPrefix(XenUplink(to), "up")
	switch {
	case err != nil:
		sp = "error: " + err.Error()
	case sp == "":
		sp = "unknown (flooding)"
	case sp == want:
		sp += " (" + to + ")"
	case sp == "pA" || sp == "pB":
		sp += " (stale)"
	}
	return Report{Scenario: name, Result: res, SwitchPort: sp, HostBPort: hb}
}
