//go:build linux

package xenhost

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/selfannounce/selfannounce/announce/xenstore"
	"github.com/selfannounce/selfannounce/internal/lab"
	"github.com/selfannounce/selfannounce/internal/netlab"
)

// DeviceModel is Debian's qemu-system-xen, the HVM device model.
const DeviceModel = "/usr/libexec/xen-qemu-system-i386"

// HVMName is the HVM guest's xl name.
const HVMName = "sa-hvm"

// HVM is the RHEL 5 incident's guest: HVM, no PV drivers, its only NIC an
// e1000 that qemu-system-xen emulates behind the tap vifN.0-emu. xen_nopv
// keeps Linux from using any Xen interface, so libxl suspends it through
// the hypervisor as it must a guest without PV drivers, and
// xen_emul_unplug=never keeps the emulated NIC plugged. It is silent like
// the PVH guest: ARP off, static neighbours, no IPv6.
type HVM struct {
	tb     *Testbed
	Cfg    map[string]string // bridge -> config
	Bridge string
	DomID  int
	initrd string
}

// NewHVM replaces the testbed's PVH guest with the HVM guest, created on
// the PVH guest's bridge with its MAC and address, so the lab's ping and
// forwarding checks carry over. A guest the emulator kills while booting
// is created again, at most MaxRedos times.
func (tb *Testbed) NewHVM(ctx context.Context) (*HVM, error) {
	if _, err := os.Stat(DeviceModel); err != nil {
		return nil, fmt.Errorf("HVM guest: no device model (qemu-system-xen; make deps-vm installs it): %w", err)
	}
	if err := tb.Host.Destroy(ctx, tb.Name); err != nil {
		return nil, err
	}
	abi, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return nil, err
	}
	initrd, err := BuildInitramfs(filepath.Join(tb.Dir), "/lib/modules", strings.TrimSpace(string(abi)), Guest{
		MAC: lab.GuestMAC, IP: lab.GuestIP, Neighbours: map[string]string{lab.ClientIP: lab.ClientMAC}, Driver: DriverE1000,
	})
	if err != nil {
		return nil, err
	}
	hvmInitrd := filepath.Join(tb.Dir, "hvm-initrd.gz")
	if err := os.Rename(initrd, hvmInitrd); err != nil {
		return nil, err
	}
	g := &HVM{tb: tb, Cfg: map[string]string{}, Bridge: tb.Bridge, initrd: hvmInitrd}
	if err := g.writeConfigs(); err != nil {
		return nil, err
	}
	var last error
	redos, err := tb.Host.Redo(MaxRedos, func(attempt int) error {
		if attempt > 0 {
			tb.Log("redo %d of the HVM guest's creation: %v", attempt, last)
		}
		last = g.create(ctx, g.Bridge)
		g.fallBack(last)
		return last
	})
	tb.Redos += redos
	if err != nil {
		return nil, err
	}
	if err := tb.Lab.Meet(g.Bridge); err != nil {
		return nil, err
	}
	if out, err := tb.Lab.Client.Run("ping", "-c", "3", "-i", "0.2", "-W", "3", lab.GuestIP); err != nil {
		return nil, fmt.Errorf("the client cannot reach the HVM guest on %s before any migration: %v\n%s", g.Bridge, err, out)
	}
	return g, nil
}

// fallBack is Testbed.fallBack for the HVM guest's configs too: its tap
// and vif are plugged by the same script.
func (g *HVM) fallBack(err error) {
	was := g.tb.LeanHotplug
	g.tb.fallBack(err)
	if !was && g.tb.LeanHotplug {
		if werr := g.writeConfigs(); werr != nil {
			g.tb.Log("lean hotplug for the HVM guest: %v", werr)
		}
	}
}

// serialLog is where the device model writes the guest's serial console
// for the config on bridge: each QEMU has its own file.
func serialLog(bridge string) string { return "/var/log/xen/" + HVMName + "-serial-" + bridge + ".log" }

func (g *HVM) writeConfigs() error {
	script, err := g.tb.hotplugScript()
	if err != nil {
		return err
	}
	for _, br := range []string{lab.XenBridgeA, lab.XenBridgeB} {
		c := Config{
			Name: HVMName, Type: "hvm", Kernel: g.tb.vmlinuz, Ramdisk: g.initrd, MemMB: 192,
			Extra: "xen_emul_unplug=never xen_nopv ipv6.disable=1 console=ttyS0",
			Vif:   fmt.Sprintf("type=ioemu,model=e1000,mac=%s,bridge=%s,ip=%s%s", lab.GuestMAC, br, lab.GuestIP, script),
			More: []string{
				`device_model_version = "qemu-xen"`,
				fmt.Sprintf("device_model_override = %q", DeviceModel),
				"vnc = 0", "sdl = 0", "nographic = 1",
				fmt.Sprintf("serial = %q", "file:"+serialLog(br)),
			},
		}
		g.Cfg[br] = filepath.Join(g.tb.Dir, "hvm-"+br+".cfg")
		if err := c.Write(g.Cfg[br]); err != nil {
			return err
		}
	}
	return nil
}

func (g *HVM) create(ctx context.Context, bridge string) error {
	h := g.tb.Host
	h.Destroy(ctx, HVMName)
	os.Remove(serialLog(bridge))
	t0 := time.Now()
	g.tb.Log("xl create of the HVM guest on %s", bridge)
	id, err := h.Create(ctx, g.Cfg[bridge], 5*time.Minute)
	if err != nil {
		return err
	}
	g.DomID, g.Bridge = id, bridge
	if err := h.waitLog(ctx, HVMName, serialLog(bridge), "GUEST READY", 10*time.Minute); err != nil {
		return err
	}
	g.tb.Log("xl create + HVM guest boot on %s: %v (domid %d)", bridge, time.Since(t0).Round(time.Millisecond), id)
	return nil
}

// Lab is the switch namespace the guest's bridges uplink to.
func (g *HVM) Lab() *netlab.NS { return g.tb.Lab.Switch }

// Tap is the guest's emulated NIC's tap now.
func (g *HVM) Tap() string { return fmt.Sprintf("vif%d.0-emu", g.DomID) }

// Destroy removes the HVM guest.
func (g *HVM) Destroy() { g.tb.Host.Destroy(context.Background(), HVMName) }

// HVMMoved is what an HVM migration looked like from dom0. Its report's
// pings start at the domain's start.
type HVMMoved struct {
	DomID int
	Tap   string    // the destination's emulated-NIC tap
	TapUp time.Time // when it was bridged, up, with carrier (rtnetlink)
	// Started is when xl renamed the incoming domain to its own name, as
	// a xenstore watch in this process read it: the domain's start.
	Started time.Time
	Took    time.Duration
	Report  lab.Report
}

// Move migrates the HVM guest to bridge to while the client pings it, and
// redoes it at most MaxRedos times when the emulator killed the guest.
// before runs before each attempt and after after it.
func (g *HVM) Move(ctx context.Context, to, label string, before func(attempt int), after func()) (*HVMMoved, int, error) {
	var mv *HVMMoved
	redos, err := g.tb.Host.Redo(MaxRedos, func(attempt int) error {
		if attempt > 0 {
			if id, err := g.tb.Host.DomID(ctx, HVMName); err == nil {
				g.DomID = id
				g.tb.Log("redo %d of %q: the HVM guest survived on %s (domid %d)", attempt, label, g.Bridge, id)
			} else {
				g.tb.Log("redo %d of %q: the emulator killed the HVM guest; recreating it on %s", attempt, label, g.Bridge)
				if err := g.create(ctx, g.Bridge); err != nil {
					return err
				}
			}
		}
		if before != nil {
			before(attempt)
		}
		g.tb.Log("%s: xl migrate %s -> %s", label, g.Bridge, to)
		var err error
		mv, err = g.move(ctx, to, label)
		if after != nil {
			after()
		}
		if err != nil {
			g.tb.Log("%s: attempt %d: %v", label, attempt, err)
		}
		g.fallBack(err)
		return err
	})
	g.tb.Redos += redos
	if err != nil {
		return nil, redos, err
	}
	g.Bridge, g.DomID = to, mv.DomID
	g.tb.Log("%s: xl migrate took %v; %s up at %s, domain started %v after", label, mv.Took.Round(time.Millisecond), mv.Tap, mv.TapUp.Format("15:04:05.000"), mv.Started.Sub(mv.TapUp).Round(time.Millisecond))
	return mv, redos, nil
}

func (g *HVM) move(ctx context.Context, to, label string) (*HVMMoved, error) {
	h, l := g.tb.Host, g.tb.Lab
	if err := l.Meet(g.Bridge); err != nil {
		return nil, err
	}
	w, err := WatchTapCarrier(g.Tap())
	if err != nil {
		return nil, err
	}
	defer w.Close()
	rw, err := watchRename(HVMName, g.DomID)
	if err != nil {
		return nil, err
	}
	defer rw.close()
	// The client starts pinging when the domain starts here, not before:
	// echo requests the guest's e1000 took in just before the suspend are
	// answered right after the resume, through the new tap, and those
	// replies alone would move the switch. Measured from the start, the
	// guest is as silent as the incident's.
	type started struct {
		p   *lab.OpenPinger
		err error
	}
	pc := make(chan started, 1)
	quit := make(chan struct{})
	go func() {
		select {
		case <-rw.renamed:
			p, err := l.StartOpenPing(PingInterval)
			pc <- started{p, err}
		case <-quit:
			pc <- started{nil, fmt.Errorf("%s never started on this host", HVMName)}
		}
	}()
	received := false
	defer func() {
		if !received {
			close(quit)
			if s := <-pc; s.p != nil {
				s.p.Stop()
			}
		}
	}()
	start := time.Now()
	id, err := h.Migrate(ctx, HVMName, g.Cfg[to], 10*time.Minute)
	if err != nil {
		return nil, err
	}
	mv := &HVMMoved{DomID: id, Took: time.Since(start)}
	if mv.Tap, mv.TapUp, err = w.Carrier(90 * time.Second); err != nil {
		return nil, h.wrap("destination tap carrier", err)
	}
	if mv.Started, err = rw.wait(id, 30*time.Second); err != nil {
		return nil, err
	}
	s := <-pc
	received = true
	if s.err != nil {
		return nil, s.err
	}
	time.Sleep(time.Until(mv.Started.Add(10 * time.Second)))
	mv.Report = l.XenReport(label, s.p.Stop(), to)
	if c := h.Crash(); c != "" {
		return mv, &CrashError{Step: "after xl migrate " + HVMName, Lines: c, Err: context.Canceled}
	}
	return mv, nil
}

// renameWatch records when a domain other than the one the guest has now
// takes the guest's own name: xl's rename of the incoming domain.
type renameWatch struct {
	c      *xenstore.Client
	mu     sync.Mutex
	seen   map[int]time.Time
	cancel context.CancelFunc
	// renamed closes at the first rename.
	renamed chan struct{}
}

func watchRename(name string, oldID int) (*renameWatch, error) {
	c, err := xenstore.DialDefault()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	events, _, err := c.Watch(ctx, "/local/domain", "sa-test-rename")
	if err != nil {
		cancel()
		c.Close()
		return nil, err
	}
	rw := &renameWatch{c: c, seen: map[int]time.Time{}, cancel: cancel, renamed: make(chan struct{})}
	go func() {
		for p := range events {
			rest, ok := strings.CutPrefix(p, "/local/domain/")
			idStr, leaf, ok2 := strings.Cut(rest, "/")
			if !ok || !ok2 || leaf != "name" {
				continue
			}
			now := time.Now()
			id, err := strconv.Atoi(idStr)
			if err != nil || id == oldID {
				continue
			}
			rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
			v, err := c.Read(rctx, p)
			rcancel()
			if err == nil && v == name {
				rw.mu.Lock()
				if _, ok := rw.seen[id]; !ok {
					if len(rw.seen) == 0 {
						close(rw.renamed)
					}
					rw.seen[id] = now
				}
				rw.mu.Unlock()
			}
		}
	}()
	return rw, nil
}

func (rw *renameWatch) wait(id int, d time.Duration) (time.Time, error) {
	end := time.Now().Add(d)
	for {
		rw.mu.Lock()
		at, ok := rw.seen[id]
		rw.mu.Unlock()
		if ok {
			return at, nil
		}
		if time.Now().After(end) {
			return time.Time{}, fmt.Errorf("domain %d never took the name %s in xenstore", id, HVMName)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (rw *renameWatch) close() {
	rw.cancel()
	rw.c.Close()
}

// Incoming reports whether some domain still carries xl's incoming name
// for the HVM guest: read right after a frame is seen, true proves the
// frame left before the domain started (a late read can only miss that,
// never invent it).
func Incoming(ctx context.Context) (bool, error) {
	c, err := xenstore.DialDefault()
	if err != nil {
		return false, err
	}
	defer c.Close()
	ids, err := c.Directory(ctx, "/local/domain")
	if err != nil {
		return false, err
	}
	for _, id := range ids {
		if v, err := c.Read(ctx, "/local/domain/"+id+"/name"); err == nil && v == HVMName+"--incoming" {
			return true, nil
		}
	}
	return false, nil
}
