// Package daemon decides when a VM has really arrived and announces it then,
// never before. It consumes link state (rtnetlink, OVSDB), first frames from
// guests and libvirt resume events; the OS sits behind the Deps interfaces
// so the decisions can be tested without root.
package daemon

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/burst"
	"github.com/selfannounce/selfannounce/announce/config"
	"github.com/selfannounce/selfannounce/announce/linuxbr"
	"github.com/selfannounce/selfannounce/announce/metrics"
	"github.com/selfannounce/selfannounce/announce/netwatch"
	"github.com/selfannounce/selfannounce/announce/ovs"
	"github.com/selfannounce/selfannounce/announce/plan"
)

// Planner builds the frames and path for a guest behind a port.
type Planner interface {
	Plan(port string, g announce.Guest) (*plan.Plan, error)
}

// LinkTablePlanner is a Planner that can resolve a Linux-bridge port's path
// from links the daemon already holds, rather than asking the OS again on
// the arrival's critical path. links are the port, its bridge and the
// bridge's other ports, as the latest rtnetlink events described them; the
// slice is the daemon's and valid only during the call (the plan may keep
// copies of its elements, not the slice).
type LinkTablePlanner interface {
	PlanLinks(links []linuxbr.TableLink, port string, g announce.Guest) (*plan.Plan, error)
}

// FrameListener waits for the first frame a guest sends through a port.
type FrameListener interface {
	Wait(ctx context.Context) (src net.HardwareAddr, at time.Time, err error)
	Close() error
}

// Deps are the daemon's ways into the OS.
type Deps struct {
	Log     *zap.Logger
	Engine  *burst.Engine
	Linux   Planner
	OVS     Planner // nil when OVS support is off
	Metrics *metrics.Metrics
	// Resolve finds the guest behind a port (config, xenstore, libvirt).
	Resolve func(ctx context.Context, port string) (announce.Guest, bool, error)
	// HostIPs lists this host's own addresses, never announced. The host's
	// own MACs need no call: they are those of the links the daemon keeps
	// whose names are not VM ports'.
	HostIPs func(ctx context.Context) ([]netip.Addr, error)
	// ListenFrames opens a guest-frame listener on a port; nil disables the
	// guest-frame trigger (such ports then wait forever).
	ListenFrames func(ifindex int) (FrameListener, error)
	Now          func() time.Time
}

// Arrival triggers, as logged and counted.
const (
	byCarrier    = "carrier"
	byGuestFrame = "guest-frame"
	byLibvirt    = "libvirt-resumed"
	byExisting   = "existing"
)

type backend uint8

const (
	linuxBridge backend = iota
	ovsBridge
)

// port is one VM port the daemon follows.
type port struct {
	key     string // "ifindex" for Linux ports, "ovs:name" for OVS ones
	name    string
	ifindex int
	backend backend
	trigger config.Trigger
	ready   bool

	frameSeen bool
	// resumed: libvirt said the domain runs here (RESUMED/MIGRATED) before
	// the port was ready; whatever the trigger, the port is announced when
	// it becomes ready.
	resumed  bool
	frameMAC net.HardwareAddr
	frameAt  time.Time
	listen   context.CancelFunc

	// announced is true once this arrival was handled (announced,
	// suppressed or present at start-up): it resets when the port leaves.
	announced bool
	readyAt   time.Time
}

// guest tracks bursts per MAC: one burst per arrival, and a flap guard.
type guest struct {
	lastStart time.Time
	owner     string // port key of the running burst
	deferred  stopper
	pending   string // port key waiting for the holddown to end
}

// Daemon is the arrival state machine.
type Daemon struct {
	d   Deps
	mu  sync.Mutex
	cfg *config.Config
	// links is the kernel's view, by ifindex, to find bridges by index.
	links  map[int]netwatch.Link
	ports  map[string]*port
	guests map[string]*guest
	closed bool
	// afterFunc arms the flap guard's deferred bursts; tests swap in a
	// fake clock's.
	afterFunc func(time.Duration, func()) stopper
	// ovsPorts is OVSDB's view, by interface name (see ovs.go).
	ovsPorts map[string]ovs.Port
	// table is bridgeTable's buffer.
	table []linuxbr.TableLink
}

// New returns a daemon that acts on cfg.
func New(cfg *config.Config, d Deps) *Daemon {
	if d.Now == nil {
		d.Now = time.Now
	}
	return &Daemon{d: d, cfg: cfg, links: map[int]netwatch.Link{}, ports: map[string]*port{}, guests: map[string]*guest{},
		afterFunc: func(d time.Duration, f func()) stopper { return time.AfterFunc(d, f) }}
}

// SetConfig swaps the configuration (SIGHUP). Ports keep their state; the
// new rules apply from the next event on.
func (dm *Daemon) SetConfig(cfg *config.Config) {
	dm.mu.Lock()
	defer dm.mu.Unlock()
	dm.cfg = cfg
}

// Config returns the configuration in force.
func (dm *Daemon) Config() *config.Config {
	dm.mu.Lock()
	defer dm.mu.Unlock()
	return dm.cfg
}

// Close stops every listener and deferred burst.
func (dm *Daemon) Close() {
	dm.mu.Lock()
	defer dm.mu.Unlock()
	dm.closed = true
	for _, p := range dm.ports {
		dm.stopListening(p)
	}
	for _, g := range dm.guests {
		if g.deferred != nil {
			g.deferred.Stop()
		}
	}
}

// Initial takes the links present at start. Ports already ready are not
// announced (a restart must never storm) unless announce-existing is set.
func (dm *Daemon) Initial(links []netwatch.Link) {
	now := dm.d.Now()
	dm.mu.Lock()
	defer dm.mu.Unlock()
	for _, l := range links {
		dm.links[l.Index] = l
	}
	for _, l := range links {
		p := dm.track(l)
		if p == nil {
			continue
		}
		dm.atStart(p, dm.linuxReady(l), now)
	}
	dm.gaugePorts()
}

// atStart settles a port found at start-up. A ready one is taken as already
// announced (a restart must never storm) unless announce-existing is set.
// The guest-frame listener track opened stays: the running guest's first
// frame consumes it without effect.
func (dm *Daemon) atStart(p *port, ready bool, now time.Time) {
	p.ready = ready
	if !ready {
		return
	}
	p.readyAt = now
	if dm.cfg.AnnounceExisting && p.trigger != config.TriggerManual {
		dm.arrive(p, byExisting, now)
		return
	}
	p.announced = true
}

// Link handles one rtnetlink event.
func (dm *Daemon) Link(ev netwatch.Event) {
	now := dm.d.Now()
	dm.mu.Lock()
	defer dm.mu.Unlock()
	if dm.closed {
		return
	}
	l := ev.Link
	key := linuxKey(l.Index)
	if dm.ovsLinkEvent(ev, now) {
		return
	}
	if ev.Deleted {
		delete(dm.links, l.Index)
		if p := dm.ports[key]; p != nil {
			dm.leave(p, "deleted")
			dm.stopListening(p)
			delete(dm.ports, key)
		}
		dm.gaugePorts()
		return
	}
	dm.links[l.Index] = l
	p := dm.ports[key]
	if p == nil {
		if p = dm.track(l); p == nil {
			return
		}
	} else if p.name != l.Name {
		// A renamed port may now match a different rule, or none.
		dm.leave(p, "renamed")
		dm.stopListening(p)
		delete(dm.ports, key)
		if p = dm.track(l); p == nil {
			dm.gaugePorts()
			return
		}
	}
	dm.update(p, dm.linuxReady(l), now)
	dm.gaugePorts()
}

// track starts following a link if it is a VM port with a trigger.
func (dm *Daemon) track(l netwatch.Link) *port {
	if dm.ovsLink(l) {
		return nil
	}
	tr, ok := dm.cfg.TriggerFor(l.Name)
	if !ok {
		return nil
	}
	p := &port{key: linuxKey(l.Index), name: l.Name, ifindex: l.Index, backend: linuxBridge, trigger: tr}
	dm.ports[p.key] = p
	if tr == config.TriggerGuestFrame {
		// From the port's creation: QEMU's RARP may come before the port
		// joins its bridge.
		dm.startListening(p)
	}
	return p
}

// linuxReady: attached to a watched Linux bridge, admin up, carrier, and
// forwarding (STP reports forwarding also when it is off).
func (dm *Daemon) linuxReady(l netwatch.Link) bool {
	if l.Master == 0 || !l.AdminUp || !l.OperUp || l.STP != netwatch.STPForwarding {
		return false
	}
	br, ok := dm.links[l.Master]
	return ok && br.Kind == "bridge" && dm.cfg.BridgeWatched(br.Name)
}

// update applies a readiness change and fires the trigger when its
// conditions hold, in whatever order they came.
func (dm *Daemon) update(p *port, ready bool, now time.Time) {
	was := p.ready
	p.ready = ready
	switch {
	case was && !ready:
		dm.leave(p, "not ready")
		if p.trigger == config.TriggerGuestFrame {
			// The next arrival needs a fresh first frame.
			dm.startListening(p)
		}
		return
	case !was && ready:
		p.readyAt = now
	}
	if !ready || p.announced {
		return
	}
	if p.resumed {
		dm.arrive(p, byLibvirt, now)
		return
	}
	switch p.trigger {
	case config.TriggerCarrier:
		dm.arrive(p, byCarrier, now)
	case config.TriggerGuestFrame:
		if p.frameSeen {
			dm.arrive(p, byGuestFrame, now)
		}
	}
}

// leave resets a port's arrival when it detaches, loses carrier or goes
// away: its running burst ends, and its next arrival is announced anew.
func (dm *Daemon) leave(p *port, why string) {
	p.ready = false
	p.announced = false
	p.frameSeen = false
	p.resumed = false
	p.frameMAC = nil
	for mac, g := range dm.guests {
		if g.pending == p.key {
			g.pending = ""
			if g.deferred != nil {
				g.deferred.Stop()
				g.deferred = nil
			}
		}
		if g.owner == p.key {
			g.owner = ""
			if dm.d.Engine.Cancel(mac) {
				dm.d.Log.Info("burst cancelled", zap.String("port", p.name), zap.String("mac", mac), zap.String("reason", why))
			}
		}
	}
}

func (dm *Daemon) startListening(p *port) {
	if dm.d.ListenFrames == nil || p.listen != nil || p.ifindex == 0 {
		return
	}
	l, err := dm.d.ListenFrames(p.ifindex)
	if err != nil {
		dm.d.Log.Warn("cannot listen for guest frames", zap.String("port", p.name), zap.Error(err))
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.listen = cancel
	key, name := p.key, p.name
	go func() {
		defer l.Close()
		src, at, err := l.Wait(ctx)
		if err != nil {
			if ctx.Err() == nil {
				// The port stays followed, but only a carrier-independent
				// signal (a libvirt resume) can announce it now.
				dm.d.Log.Warn("guest-frame listener failed", zap.String("port", name), zap.Error(err))
			}
			return
		}
		dm.guestFrame(key, ctx, src, at)
	}()
}

func (dm *Daemon) stopListening(p *port) {
	if p.listen != nil {
		p.listen()
		p.listen = nil
	}
}

// guestFrame records the first frame from the guest; the listener is done.
func (dm *Daemon) guestFrame(key string, ctx context.Context, src net.HardwareAddr, at time.Time) {
	dm.mu.Lock()
	defer dm.mu.Unlock()
	p := dm.ports[key]
	if p == nil || ctx.Err() != nil || dm.closed {
		return
	}
	dm.stopListening(p)
	p.frameSeen, p.frameMAC, p.frameAt = true, src, at
	if p.ready && !p.announced {
		// Latency counts from the kernel's receive time of the frame, not
		// from when this goroutine got to it.
		t := dm.d.Now()
		if !at.IsZero() && !at.After(t) {
			t = at
		}
		dm.arrive(p, byGuestFrame, t)
	}
}

func linuxKey(index int) string { return "if" + itoa(index) }

func itoa(i int) string {
	var b [20]byte
	n := len(b)
	if i == 0 {
		return "0"
	}
	for i > 0 {
		n--
		b[n] = byte('0' + i%10)
		i /= 10
	}
	return string(b[n:])
}

func (dm *Daemon) gaugePorts() {
	if dm.d.Metrics == nil {
		return
	}
	ready := 0
	for _, p := range dm.ports {
		if p.ready {
			ready++
		}
	}
	dm.d.Metrics.Ports.WithLabelValues("ready").Set(float64(ready))
	dm.d.Metrics.Ports.WithLabelValues("waiting").Set(float64(len(dm.ports) - ready))
}

// LinuxReady is the readiness rule for a Linux-bridge port, for callers
// outside the daemon (the one-shot's --wait-ready): attached to a watched
// bridge, admin up, carrier, STP forwarding.
func LinuxReady(cfg *config.Config, links map[int]netwatch.Link, l netwatch.Link) bool {
	dm := Daemon{cfg: cfg, links: links}
	return dm.linuxReady(l)
}

// OVSWaitReady is the readiness rule for an Open vSwitch port, for the
// one-shot's --wait-ready: an OpenFlow number on a watched bridge, and up
// with carrier (from netlink when the port has a netdev, as in the daemon).
func OVSWaitReady(cfg *config.Config, links map[int]netwatch.Link, op ovs.Port) bool {
	dm := Daemon{cfg: cfg, links: links}
	return dm.ovsReady(op)
}
