package daemon

import (
	"errors"
	"testing"

	"github.com/selfannounce/selfannounce/announce/config"
	"github.com/selfannounce/selfannounce/announce/xenstart"
)

// An HVM guest's emulated-NIC tap is bridged with carrier while xl still
// holds the incoming domain paused: nothing goes out until the domain
// starts, then one burst.
func TestXenStartWaitsForTheDomain(t *testing.T) {
	h := newHarness(t, nil)
	emu := ready(11, "vif7.0-emu")
	h.guest("vif7.0-emu", macA, "192.0.2.7")
	h.start()
	h.link(down(emu))
	h.link(emu)
	h.wantSilence()
	h.xenStart(7, xenstart.Event{Renamed: true})
	h.wantBursts(macA, 1)
}

// The domain's start may come first (a fresh xl create, or xenstore read
// before the hotplug script bridged the tap): the tap's readiness is then
// the arrival.
func TestXenStartBeforeReady(t *testing.T) {
	h := newHarness(t, nil)
	emu := ready(11, "vif7.0-emu")
	h.guest("vif7.0-emu", macA)
	h.start()
	h.link(down(emu))
	h.xenStart(7, xenstart.Event{})
	h.wantSilence()
	h.link(emu)
	h.wantBursts(macA, 1)
}

// At daemon start, running HVM guests are not arrivals; a domain xl was
// still receiving is, when it starts.
func TestXenStartAtDaemonStart(t *testing.T) {
	h := newHarness(t, nil)
	running, incoming := ready(11, "vif7.0-emu"), ready(12, "vif8.0-emu")
	h.guest("vif7.0-emu", macA)
	h.guest("vif8.0-emu", macB)
	h.start(running, incoming)
	h.xenStart(7, xenstart.Event{})
	h.wantSilence()
	h.xenStart(8, xenstart.Event{Renamed: true})
	h.wantBursts(macB, 1)
	h.wantBursts(macA, 0)
}

// xenstore unreachable or wedged: the tap falls back to its carrier, and
// the daemon says so.
func TestXenStartUnknownFallsBackToCarrier(t *testing.T) {
	h := newHarness(t, nil)
	emu := ready(11, "vif7.0-emu")
	h.guest("vif7.0-emu", macA)
	h.start()
	h.link(emu)
	h.wantSilence()
	h.xenStart(7, xenstart.Event{Unknown: true, Err: errors.New("xenstore not reachable")})
	h.wantBursts(macA, 1)
}

// A report for a tap that has gone (the incoming domain was destroyed, a
// late watcher) sends nothing, and the follow of a deleted port is stopped.
func TestXenStartForGonePort(t *testing.T) {
	h := newHarness(t, nil)
	emu := ready(11, "vif7.0-emu")
	h.guest("vif7.0-emu", macA)
	h.start()
	h.link(emu)
	h.del(emu)
	h.xen.mu.Lock()
	stopped := h.xen.stopped
	h.xen.mu.Unlock()
	if stopped != 1 {
		t.Errorf("%d follows stopped, want 1", stopped)
	}
	h.xenStart(7, xenstart.Event{Renamed: true})
	h.wantSilence()
}

// A tap whose name carries no domain id follows nothing: carrier decides.
func TestXenStartWithoutDomainID(t *testing.T) {
	h := newHarness(t, func(c *config.Config) {
		c.Ports = []config.PortRule{{Match: "emu*", Trigger: config.TriggerXenStart}}
		c.VMPorts = append(c.VMPorts, "emu*")
	})
	emu := ready(11, "emu-guest")
	h.guest("emu-guest", macA)
	h.start()
	h.link(emu)
	h.wantBursts(macA, 1)
}
