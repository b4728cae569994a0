//go:build linux

package xenhost

import (
	"context"
	"errors"
	"fmt"
	"os"
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
	// LeanHotplug says the vifs are plugged by LeanHotplugScript, not the
	// packaged vif-bridge: set after libxl killed vif-bridge for its fixed
	// 40 s timeout (a PV dom0 under TCG on a loaded host forks that
	// slowly). The vif-post.d hooks run the same way either way.
	LeanHotplug bool

	vmlinuz, initrd string
	lastErr         error
}

// LeanHotplugScript is what vif-bridge does for a netback vif (plug it
// into the bridge named in xenstore, admin-up, source every
// vif-post.d/*.hook with vif-bridge's variables, report "connected"), in
// four processes instead of about forty.
const LeanHotplugScript = `#!/bin/bash
# selfannounce test harness: vif-bridge's online/offline for a PV vif, lean.
command=$1
type_if=vif
for a in "$@"; do case "$a" in type_if=*) type_if=${a#type_if=} ;; esac; done
dev=${vif:-}
[ "$type_if" = tap ] && dev=${INTERFACE:-}
bridge=$(xenstore-read "$XENBUS_PATH/bridge")
case "$command" in
online | add) ip link set dev "$dev" master "$bridge" up ;;
offline | remove) ip link set dev "$dev" nomaster 2>/dev/null ;;
esac
for f in /etc/xen/scripts/vif-post.d/*.hook; do
	[ -x "$f" ] && . "$f"
done
if [ "$command" = online ]; then xenstore-write "$XENBUS_PATH/hotplug-status" connected; fi
exit 0
`

// EnvLeanHotplug=1 starts with the lean hotplug script, skipping the
// packaged vif-bridge's first, timed-out attempt on a host known to be
// too loaded for it.
const EnvLeanHotplug = "SELFANNOUNCE_XEN_LEAN_HOTPLUG"

// LeanHotplugPath is where the lean script is installed in dom0.
const LeanHotplugPath = "/etc/xen/scripts/vif-bridge-selfannounce-lean"

// writeConfigs writes the guest's config for each bridge.
func (tb *Testbed) writeConfigs() error {
	script, err := tb.hotplugScript()
	if err != nil {
		return err
	}
	for _, br := range []string{lab.XenBridgeA, lab.XenBridgeB} {
		c := Config{
			Name: tb.Name, Kernel: tb.vmlinuz, Ramdisk: tb.initrd, MemMB: 128,
			Extra: "console=hvc0 quiet ipv6.disable=1",
			// ip= is dom0's record of the guest's address, as a
			// toolstack writes it: the trusted one.
			Vif:  fmt.Sprintf("mac=%s,bridge=%s,ip=%s%s", lab.GuestMAC, br, lab.GuestIP, script),
			More: GuestTuning,
		}
		tb.Cfg[br] = filepath.Join(tb.Dir, "guest-"+br+".cfg")
		if err := c.Write(tb.Cfg[br]); err != nil {
			return err
		}
	}
	return nil
}

// hotplugScript is the vif spec's script= part: empty for the packaged
// vif-bridge, the lean script (installed now) after a fallback.
func (tb *Testbed) hotplugScript() (string, error) {
	if !tb.LeanHotplug {
		return "", nil
	}
	if err := os.WriteFile(LeanHotplugPath, []byte(LeanHotplugScript), 0o755); err != nil {
		return "", err
	}
	return ",script=" + LeanHotplugPath, nil
}

// fallBack switches to the lean hotplug script after a vif-bridge timeout.
func (tb *Testbed) fallBack(err error) {
	var ce *CrashError
	if tb.LeanHotplug || !errors.As(err, &ce) || !strings.Contains(ce.Lines, "killing execution") {
		return
	}
	tb.LeanHotplug = true
	if werr := tb.writeConfigs(); werr != nil {
		tb.Log("lean hotplug: %v", werr)
		return
	}
	tb.Log("libxl killed the packaged vif-bridge for its 40 s timeout; from now on the lean hotplug script plugs the vifs (%s)", LeanHotplugPath)
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
	tb := &Testbed{Host: h, Lab: l, Dir: dir, Name: "sa-guest", Cfg: map[string]string{}, Bridge: lab.XenBridgeA, Log: logf,
		LeanHotplug: os.Getenv(EnvLeanHotplug) == "1"}
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
	tb.vmlinuz, tb.initrd = vmlinuz, initrd
	if err := tb.writeConfigs(); err != nil {
		return fail(err)
	}
	redos, err := h.Redo(MaxRedos, func(attempt int) error {
		if attempt > 0 {
			tb.Log("redo %d of the guest's creation: %v", attempt, tb.lastErr)
		}
		tb.lastErr = tb.create(ctx, lab.XenBridgeA)
		tb.fallBack(tb.lastErr)
		return tb.lastErr
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
		if err != nil {
			tb.Log("%s: attempt %d: %v", label, attempt, err)
		}
		tb.fallBack(err)
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
