//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/selfannounce/selfannounce/announce/linuxbr"
	"github.com/selfannounce/selfannounce/announce/netwatch"
	"github.com/selfannounce/selfannounce/announce/resolve"
)

// probeCmd is the hidden subcommand run inside the host namespace (its own
// /sys view included) to time the steps of one arrival separately.
const probeCmd = "probe-costs"

type stepCost struct {
	name string
	cost time.Duration
}

// probeSteps times, in the calling process, what the daemon does for one
// arrival on port, averaged over reps runs.
func probeSteps(port string, mac net.HardwareAddr, reps int) ([]stepCost, error) {
	host := linuxbr.NewHost("/sys")
	h, err := resolve.SystemHostAddrs(linuxbr.DefaultVMPorts)
	if err != nil {
		return nil, err
	}
	links, err := watchedLinks()
	if err != nil {
		return nil, err
	}
	var ips resolve.HostIPLister
	defer ips.Close()
	var fdb linuxbr.FDB
	defer fdb.Close()
	var p *linuxbr.Path
	steps := []struct {
		name string
		fn   func() error
	}{
		{"net.Interfaces (link dump)", func() error { _, err := net.Interfaces(); return err }},
		{"net.InterfaceAddrs (address dump)", func() error { _, err := net.InterfaceAddrs(); return err }},
		{"rtnetlink link dump with statistics (what net.Interfaces asks for)", func() error { return linkDump(false) }},
		{"rtnetlink link dump, RTEXT_FILTER_SKIP_STATS", func() error { return linkDump(true) }},
		{"host-owned MACs and addresses (resolve.SystemHostAddrs.Owned: link and address dumps; the one-shot's)", func() error { _, _, err := h.Owned(context.Background()); return err }},
		{"host addresses (resolve.HostIPLister: address dump on a kept socket; the daemon's, which takes MACs from its link table)", func() error { _, err := ips.List(context.Background()); return err }},
		{"bridge path (linuxbr.Resolve via sysfs; the one-shot's)", func() (err error) { p, err = linuxbr.Resolve(host, port, nil); return err }},
		{"bridge path (linuxbr.Resolve over the daemon's link table, sysfs vlan_filtering)", func() (err error) {
			th := &linuxbr.TableHost{Links: bridgeTable(links, port), Filtering: linuxbr.SysfsVLANFiltering("/sys"), VLANTables: linuxbr.NetlinkVLANTables}
			p, err = linuxbr.Resolve(th, port, nil)
			return err
		}},
		{"FDB repair (linuxbr.FDB.Repair: one FDB entry get on a kept socket)", func() error {
			_, err := fdb.Repair(context.Background(), p, mac)
			return err
		}},
	}
	var out []stepCost
	for _, s := range steps {
		if err := s.fn(); err != nil { // warm-up, and the path for later steps
			return nil, fmt.Errorf("%s: %v", s.name, err)
		}
		t0 := time.Now()
		for i := 0; i < reps; i++ {
			s.fn()
		}
		out = append(out, stepCost{s.name, time.Since(t0) / time.Duration(reps)})
	}
	return out, nil
}

// watchedLinks is the link table the daemon starts from.
func watchedLinks() ([]netwatch.Link, error) {
	w, err := netwatch.New()
	if err != nil {
		return nil, err
	}
	defer w.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan []netwatch.Link, 1)
	errc := make(chan error, 1)
	go func() { errc <- w.Run(ctx, func(l []netwatch.Link) { got <- l }, func(netwatch.Event) {}) }()
	select {
	case l := <-got:
		return l, nil
	case err := <-errc:
		return nil, err
	}
}

// bridgeTable is what the daemon hands its planner: the port, its bridge
// and the bridge's other ports.
func bridgeTable(links []netwatch.Link, port string) []linuxbr.TableLink {
	master := 0
	for _, l := range links {
		if l.Name == port {
			master = l.Master
		}
	}
	var out []linuxbr.TableLink
	for _, l := range links {
		if l.Name == port || (master != 0 && (l.Index == master || l.Master == master)) {
			out = append(out, linuxbr.TableLink{Link: linuxbr.Link{Name: l.Name, Index: l.Index, MAC: l.MAC}, Kind: l.Kind, Master: l.Master})
		}
	}
	return out
}

func linkDump(skipStats bool) error {
	c, err := netlink.Dial(unix.NETLINK_ROUTE, nil)
	if err != nil {
		return err
	}
	defer c.Close()
	data := make([]byte, unix.SizeofIfInfomsg)
	if skipStats {
		ae := netlink.NewAttributeEncoder()
		ae.Uint32(unix.IFLA_EXT_MASK, 1<<3) // RTEXT_FILTER_SKIP_STATS
		a, err := ae.Encode()
		if err != nil {
			return err
		}
		data = append(data, a...)
	}
	_, err = c.Execute(netlink.Message{Header: netlink.Header{Type: unix.RTM_GETLINK, Flags: netlink.Request | netlink.Dump}, Data: data})
	return err
}

func probeMain(args []string) {
	if len(args) != 3 {
		fatal(fmt.Errorf("usage: %s PORT MAC REPS", probeCmd))
	}
	mac, err := net.ParseMAC(args[1])
	if err != nil {
		fatal(err)
	}
	reps, err := strconv.Atoi(args[2])
	if err != nil {
		fatal(err)
	}
	steps, err := probeSteps(args[0], mac, reps)
	if err != nil {
		fatal(err)
	}
	for _, s := range steps {
		fmt.Printf("%d\t%s\n", s.cost.Nanoseconds(), s.name)
	}
}

// costRun is the per-step cost of one arrival with n ports on the bridge.
type costRun struct {
	ports int
	steps []stepCost
}

func costsPhase(ns []int) ([]costRun, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	var out []costRun
	for _, n := range ns {
		l, err := newLab(n, func(i int) bool { return i == 0 })
		if err != nil {
			return nil, err
		}
		// Creating the links leaves the kernel busy (linkwatch) for a while.
		time.Sleep(time.Duration(n) * 5 * time.Millisecond)
		cmd := l.host.Cmd(self, probeCmd, l.vifs[0].name, l.vifs[0].mac.String(), "50")
		cmd.Stderr = os.Stderr
		b, err := cmd.Output()
		l.close()
		if err != nil {
			return nil, fmt.Errorf("%s in the lab: %v", probeCmd, err)
		}
		cr := costRun{ports: n}
		sc := bufio.NewScanner(strings.NewReader(string(b)))
		for sc.Scan() {
			ns, name, ok := strings.Cut(sc.Text(), "\t")
			if !ok {
				continue
			}
			v, _ := strconv.ParseInt(ns, 10, 64)
			cr.steps = append(cr.steps, stepCost{name, time.Duration(v)})
		}
		out = append(out, cr)
	}
	return out, nil
}
