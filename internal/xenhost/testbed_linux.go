//go:build linux

package xenhost

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/selfannounce/selfannounce/internal/lab"
)

// Testbed is a Xen host in the lab layout with one silent PVH guest,
// shared by every scenario of a boot: creating a guest costs tens of
// seconds under TCG.
type Testbed struct {
	Host   *Host
	Lab    *lab.XenLab
	Dir    string
	Name   string            // the guest's xl name
	Cfg    map[string]string // bridge -> the guest's xl config on it
	Bridge string            // the bridge the guest is on now
	DomID  int
	// Redos counts scenarios redone because the emulator killed the
	// guest (a triple fault on resume under TCG).
	Redos int
	// Log, when set, receives progress lines.
	Log func(format string, args ...any)
}

// GuestTuning holds the xl config lines the triple-fault investigation
// settled on (docs/xen.md).
var GuestTuning = []string{}

// MaxRedos is how often a scenario is redone after an emulator crash.
const MaxRedos = 2

// NewTestbed starts dom0's daemons, builds the lab layout and creates the
// guest on xenbrA from vmlinuz (the Debian kernel, booted as PVH) and an
// initramfs built now. A guest the emulator kills while booting is
// created again, at most MaxRedos times.
func NewTestbed(ctx context.Context, dir, vmlinuz string, logf func(string, ...any)) (*Testbed, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	t0 := time.Now()
	h, err := Start(ctx, dir)
	if err != nil {
		return nil, err
	}
	logf("dom0: modules, xenfs, xenstored, xen-init-dom0, xenconsoled up in %v", time.Since(t0).Round(time.Millisecond))
	l, err := lab.NewXen()
	if err != nil {
		return nil, err
	}
	tb := &Testbed{Host: h, Lab: l, Dir: dir, Name: "sa-guest", Cfg: map[string]string{}, Bridge: lab.XenBridgeA, Log: logf}
	logf("lab: switch, client, xenbrA and xenbrB up")
	fail := func(err error) (*Testbed, error) { tb.Close(); return nil, err }
	abi, err := exec.Command("uname", "-r").Output()
	if err != nil {
		return fail(err)
	}
	initrd, err := BuildInitramfs(dir, "/lib/modules", strings.TrimSpace(string(abi)), Guest{
		MAC: lab.GuestMAC, IP: lab.GuestIP, Neighbours: map[string]string{lab.ClientIP: lab.ClientMAC},
	})
	if err != nil {
		return fail(err)
	}
	for _, br := range []string{lab.XenBridgeA, lab.XenBridgeB} {
		c := Config{
			Name: tb.Name, Kernel: vmlinuz, Ramdisk: initrd, MemMB: 128,
			Extra: "console=hvc0 quiet ipv6.disable=1",
			// ip= is dom0's record of the guest's address, as a
			// toolstack writes it: the trusted one.
			Vif:  fmt.Sprintf("mac=%s,bridge=%s,ip=%s", lab.GuestMAC, br, lab.GuestIP),
			More: GuestTuning,
		}
		tb.Cfg[br] = filepath.Join(dir, "guest-"+br+".cfg")
		if err := c.Write(tb.Cfg[br]); err != nil {
			return fail(err)
		}
	}
	redos, err := h.Redo(MaxRedos, func(attempt int) error {
		if attempt > 0 {
			tb.Log("redo %d of the guest's creation: the emulator killed it", attempt)
		}
		return tb.create(ctx, lab.XenBridgeA)
	})
	tb.Redos += redos
	if err != nil {
		return fail(err)
	}
	if err := l.Meet(lab.XenBridgeA); err != nil {
		return fail(err)
	}
	if out, err := l.Client.Run("ping", "-c", "3", "-i", "0.2", "-W", "3", lab.GuestIP); err != nil {
		return fail(fmt.Errorf("the client cannot reach the guest on xenbrA before any migration: %v\n%s", err, out))
	}
	return tb, nil
}

// create (re)creates the guest on bridge and waits for its init.
func (tb *Testbed) create(ctx context.Context, bridge string) error {
	tb.Host.Destroy(ctx, tb.Name)
	t0 := time.Now()
	tb.Log("xl create on %s", bridge)
	id, err := tb.Host.Create(ctx, tb.Cfg[bridge], 5*time.Minute)
	if err != nil {
		return err
	}
	tb.DomID, tb.Bridge = id, bridge
	if err := tb.Host.WaitConsole(ctx, tb.Name, "GUEST READY", 5*time.Minute); err != nil {
		return err
	}
	tb.Log("xl create + guest boot on %s: %v (domid %d)", bridge, time.Since(t0).Round(time.Millisecond), id)
	return nil
}

// Vif is the guest's vif now.
func (tb *Testbed) Vif() string { return fmt.Sprintf("vif%d.0", tb.DomID) }

// Port is the switch port behind bridge.
func Port(bridge string) string { return "p" + strings.TrimPrefix(lab.XenUplink(bridge), "up") }

// Move migrates the guest to bridge to, observed (MigrateObserved), and
// redoes it, at most MaxRedos times, when the emulator killed the guest,
// recreating the guest where it was first. before runs before each attempt
// (start captures there) and after after it, whatever happened.
func (tb *Testbed) Move(ctx context.Context, to, label string, floor bool, before func(attempt int), after func()) (*Moved, int, error) {
	var mv *Moved
	redos, err := tb.Host.Redo(MaxRedos, func(attempt int) error {
		if attempt > 0 {
			// A failed migration resumes the guest at the sender; only a
			// guest that died is created again.
			if id, err := tb.Host.DomID(ctx, tb.Name); err == nil {
				tb.DomID = id
				tb.Log("redo %d of %q: the guest survived on %s (domid %d)", attempt, label, tb.Bridge, id)
			} else {
				tb.Log("redo %d of %q: the emulator killed the guest; recreating it on %s", attempt, label, tb.Bridge)
				if err := tb.create(ctx, tb.Bridge); err != nil {
					return err
				}
			}
		}
		if before != nil {
			before(attempt)
		}
		tb.Log("%s: xl migrate %s -> %s", label, tb.Bridge, to)
		var err error
		mv, err = tb.Host.MigrateObserved(ctx, tb.Lab, Move{
			Domain: tb.Name, Cfg: tb.Cfg[to], From: tb.Bridge, To: to, OldVif: tb.Vif(),
			Floor: floor, After: 10 * time.Second, Label: label, Deadline: 10 * time.Minute,
		})
		if after != nil {
			after()
		}
		return err
	})
	tb.Redos += redos
	if err != nil {
		return nil, redos, err
	}
	tb.Bridge, tb.DomID = to, mv.DomID
	tb.Log("%s: xl migrate took %v; %s gained carrier; redos %d", label, mv.Took.Round(time.Millisecond), mv.Vif, redos)
	return mv, redos, nil
}

// Close destroys the guest and removes the lab.
func (tb *Testbed) Close() {
	tb.Host.Destroy(context.Background(), tb.Name)
	tb.Lab.Close()
}
