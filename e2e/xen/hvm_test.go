//go:build linux

package xen_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/announce/sniff"
	"github.com/selfannounce/selfannounce/internal/lab"
	"github.com/selfannounce/selfannounce/internal/proctest"
	"github.com/selfannounce/selfannounce/internal/wiretest"
	"github.com/selfannounce/selfannounce/internal/xenhost"
)

// hvmScenario is scenario 3, the RHEL 5 incident: a silent HVM guest
// without PV drivers, its only NIC an e1000 that qemu-system-xen emulates
// behind vifN.0-emu. First without an agent, to see on the wire whether
// Xen's device model announces anything after the migration; then with
// the daemon, which must announce the guest once the domain has started
// here (xl renames NAME--incoming to NAME right before unpausing it), and
// never while xl still holds it paused as NAME--incoming.
func hvmScenario(t *testing.T, x *host, res *Results) {
	g, err := x.NewHVM(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Destroy)
	other := func() string {
		if g.Bridge == lab.XenBridgeA {
			return lab.XenBridgeB
		}
		return lab.XenBridgeA
	}

	t.Run("NoAgentMigration", func(t *testing.T) {
		from := xenhost.Port(g.Bridge)
		mv, c := hvmMove(t, g, other(), "HVM, without agent", nil)
		res.HVMWithoutAgent = mv.Report
		frames := guestFrames(c)
		// The finding, as the wire shows it: the guest is silent, so an
		// announcement with its MAC would be the device model's.
		for _, f := range frames {
			if a, ok := f.Announcement(); ok {
				res.HVMDeviceModelFrames++
				t.Logf("the device model announced: %v after the domain started: %v %v", f.At.Sub(mv.Started).Round(time.Millisecond), a.Kind, a.MAC)
			} else {
				t.Errorf("the silent HVM guest sent a frame (ethertype %#04x) %v after its domain started", f.EtherType(), f.At.Sub(mv.Started).Round(time.Millisecond))
			}
		}
		t.Logf("Xen's device model sent %d announcements for the guest after the migration", res.HVMDeviceModelFrames)
		if res.HVMDeviceModelFrames == 0 {
			if p, _ := x.l.FDBPort(x.l.Switch, "sw", lab.GuestMAC); p != from {
				t.Errorf("nothing announced the HVM guest, yet the switch sends its traffic to %q, not the stale %s", p, from)
			}
		}
	})

	t.Run("DaemonMigration", func(t *testing.T) {
		cfg := writeFile(t, x.Dir, "daemon-hvm.yaml", daemonConfig)
		d := startDaemon(t, x, cfg)
		var mu sync.Mutex
		early, checked := false, false
		mv, c := hvmMove(t, g, other(), "HVM, announce daemon", func(c *wiretest.Capture, done <-chan struct{}) {
			// The first announcement for the guest, then at once: does a
			// domain still carry xl's incoming name? A late look can only
			// miss an early frame, never invent one.
			for {
				select {
				case <-done:
					return
				default:
				}
				if fs := c.WaitFor(500*time.Millisecond, 1, isGuestAnnouncement); len(fs) > 0 {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					inc, err := xenhost.Incoming(ctx)
					cancel()
					mu.Lock()
					early, checked = inc, err == nil
					mu.Unlock()
					if err != nil {
						t.Errorf("reading the domains' names after the first announcement: %v", err)
					}
					return
				}
			}
		})
		res.HVMWithDaemon = mv.Report
		mu.Lock()
		if early {
			t.Errorf("an announcement for the guest reached the switch while xl still held the incoming domain as %s--incoming", xenhost.HVMName)
		} else if !checked {
			t.Errorf("no announcement for the guest reached the switch port %s", xenhost.Port(g.Bridge))
		}
		mu.Unlock()
		var first time.Time
		for _, f := range c.Frames(isGuestAnnouncement) {
			if f.At.Before(mv.TapUp) {
				t.Errorf("an announcement reached the switch %v before %s was up with carrier", mv.TapUp.Sub(f.At), mv.Tap)
			}
			if a, _ := f.Announcement(); a.Kind == sniff.RARP && first.IsZero() {
				first = f.At
			}
		}
		if first.IsZero() {
			t.Errorf("no RARP for %s reached the switch", lab.GuestMAC)
		} else {
			res.HVMStartToFirstRARPNs = first.Sub(mv.Started)
			t.Logf("order on the destination: %s up, then the domain's start %v later, then the first RARP %v after the start (as this test's own xenstore watch read the start)",
				mv.Tap, mv.Started.Sub(mv.TapUp).Round(time.Millisecond), first.Sub(mv.Started).Round(time.Millisecond))
		}
		if p, _ := x.l.FDBPort(x.l.Switch, "sw", lab.GuestMAC); p != xenhost.Port(g.Bridge) {
			t.Errorf("switch FDB: guest MAC on %q, want %s", p, xenhost.Port(g.Bridge))
		}
		if p, _ := x.l.FDBPort(x.l.HostB, g.Bridge, lab.GuestMAC); p != mv.Tap {
			t.Errorf("%s FDB: guest MAC on %q, want %s", g.Bridge, p, mv.Tap)
		}
		if mv.Report.Ongoing {
			t.Errorf("the client's pings did not recover: %s", mv.Report)
		}
		bursts := d.WaitLogs(10*time.Second, 1, func(l proctest.Log) bool { return l.Msg == "burst" && l.Str("port") == mv.Tap })
		if len(bursts) != 1 {
			t.Errorf("%d bursts logged for %s, want 1:\n%s", len(bursts), mv.Tap, d.Output())
		} else if b := bursts[0]; b.Str("trigger") != "xen-start" || b.Str("source") != "xenstore" || b.Str("mac") != lab.GuestMAC {
			t.Errorf("burst for %s: trigger %q source %q mac %q, want xen-start, the MAC %s from xenstore", mv.Tap, b.Str("trigger"), b.Str("source"), b.Str("mac"), lab.GuestMAC)
		}
		if w := res.HVMWithoutAgent; w.Sent > 0 {
			t.Logf("HVM lost pings at %v: without agent %d of %d, with the daemon %d of %d (ratio %.1f)",
				xenhost.PingInterval, w.Lost, w.Sent, mv.Report.Lost, mv.Report.Sent, float64(w.Lost)/max(1, float64(mv.Report.Lost)))
		}
		if err := d.Stop(10 * time.Second); err != nil {
			t.Errorf("daemon stop: %v\n%s", err, d.Output())
		}
	})
}

func isGuestAnnouncement(f wiretest.Frame) bool {
	a, ok := f.Announcement()
	return ok && a.MAC.String() == lab.GuestMAC
}

// hvmMove migrates the HVM guest to bridge to, with a capture on the
// destination's switch port started before each attempt; watch, if set,
// runs beside the migration until done closes.
func hvmMove(t *testing.T, g *xenhost.HVM, to, label string, watch func(c *wiretest.Capture, done <-chan struct{})) (*xenhost.HVMMoved, *wiretest.Capture) {
	t.Helper()
	var capt *wiretest.Capture
	var done chan struct{}
	var wg sync.WaitGroup
	mv, redos, err := g.Move(context.Background(), to, label,
		func(int) {
			capt = wiretest.Start(t, g.Lab(), xenhost.Port(to), wiretest.In)
			done = make(chan struct{})
			if watch != nil {
				wg.Add(1)
				go func() { defer wg.Done(); watch(capt, done) }()
			}
		},
		func() { close(done); wg.Wait(); capt.Stop(t) })
	t.Logf("%s: migration redos (emulator crashes): %d", label, redos)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(mv.Report.String())
	return mv, capt
}
