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
	"github.com/selfannounce/selfannounce/announce/xenstart"
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
	// XenStarted reports, once, when Xen domain domid has started here
	// (xenstart.Watcher.Follow); it must not block. nil makes the
	// xen-start trigger the same as carrier.
	XenStarted func(domid int, fn func(xenstart.Event)) (stop func())
	Now        func() time.Time
}

// Arrival triggers, as logged and counted.
const (
	byCarrier    = "carrier"
	byGuestFrame = "guest-frame"
	byLibvirt    = "libvirt-resumed"
	byExisting   = "existing"
	byHandover   = "sibling-handover"
	byXenStart   = "xen-start"
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
	// started: the port's Xen domain runs here (xen-start trigger); it
	// stays true for the port's life. stopStart ends the follow.
	started   bool
	stopStart func()
	listen    context.CancelFunc
	// relisten is the pending retry of a failed frame listener.
	relisten    stopper
	listenFails int

	// announced is true once this arrival was handled (a burst started,
	// another port's burst or the flap guard took it over, it failed for
	// good, or the port was ready at start-up): it resets when the port
	// leaves.
	announced bool
	// inflight: a worker is handling this arrival; retry: its next attempt
	// is pending, the attempt-th.
	inflight bool
	retry    stopper
	attempt  int
	// gen counts the port's arrivals: a worker whose generation is past
	// drops its result.
	gen     uint64
	readyAt time.Time
	// ident is the guest the resolvers named, cached from the port's
	// appearance; cleared when an arrival fails or the config changes.
	ident *announce.Guest
	// guests indexes the guest states this port takes part in (owner,
	// pending, standby), so leaving touches only those.
	guests  map[string]bool
	lastKey string
}

// guest tracks bursts per guest (bridge, VLAN, MAC): one burst per
// arrival, and a flap guard.
type guest struct {
	lastStart time.Time
	owner     string // port key of the latest burst
	deferred  stopper
	pending   string // port key waiting for the holddown to end
	// starting: the port whose burst is being prepared (FDB repair)
	// outside dm.mu; prev* undo its reservation if that fails.
	starting  string
	prevStart time.Time
	prevOwner string
	// standby: ports of the same guest whose arrival the owner's burst
	// covered; one is announced if the owner leaves while it stays.
	standby map[string]bool
	gc      stopper
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
	// cfgGen counts config swaps; wg counts arrival workers.
	cfgGen uint64
	wg     sync.WaitGroup
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
// new rules apply from the next event on. Ports that the new rules make
// ready (a newly watched bridge, a new port rule) have been there all
// along: they are settled as at start-up, without an arrival, rather than
// announced on their next event. Cached identities are dropped, since the
// guests entries may have changed.
func (dm *Daemon) SetConfig(cfg *config.Config) {
	now := dm.d.Now()
	dm.mu.Lock()
	defer dm.mu.Unlock()
	dm.cfg = cfg
	dm.cfgGen++
	if dm.closed {
		return
	}
	for _, p := range dm.ports {
		p.ident = nil
	}
	for _, l := range dm.links {
		if dm.ovsLink(l) {
			continue
		}
		p := dm.ports[linuxKey(l.Index)]
		if p == nil {
			if p = dm.track(l); p == nil {
				continue
			}
		}
		dm.resettle(p, dm.linuxReady(l), now)
	}
	for name, op := range dm.ovsPorts {
		if p := dm.ports[ovsKey(name)]; p != nil {
			dm.resettle(p, dm.ovsReady(op), now)
		}
	}
	dm.gaugePorts()
}

// resettle applies a readiness change that comes from the config, not the
// port: becoming ready this way is not an arrival.
func (dm *Daemon) resettle(p *port, ready bool, now time.Time) {
	switch {
	case ready && !p.ready:
		p.ready, p.readyAt, p.announced = true, now, true
	case !ready && p.ready:
		dm.update(p, false, now)
	}
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
		dm.untrack(p)
		if p.retry != nil {
			p.retry.Stop()
		}
	}
	for _, g := range dm.guests {
		if g.deferred != nil {
			g.deferred.Stop()
		}
		if g.gc != nil {
			g.gc.Stop()
		}
	}
}

// wait returns once no arrival worker runs (tests).
func (dm *Daemon) wait() { dm.wg.Wait() }

// Alive returns once the event path could take an event: dm.mu and the
// burst engine's lock are free. The systemd watchdog is fed only after it
// returns, so a wedged loop stops the pings and systemd restarts the daemon.
func (dm *Daemon) Alive() {
	dm.mu.Lock()
	dm.d.Engine.Active("")
	dm.mu.Unlock()
}

// Watchdog calls notify after every tick that the event path answers,
// until ctx ends.
func (dm *Daemon) Watchdog(ctx context.Context, tick <-chan time.Time, notify func()) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
			dm.Alive()
			notify()
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

// atStart settles a port found at start-up. A ready carrier port is taken
// as already announced (a restart must never storm) unless
// announce-existing is set. A ready guest-frame port says nothing by being
// ready (a tap has carrier from the moment QEMU opens it, long before an
// incoming migration's guest runs): it keeps the listener track opened and
// is announced on the guest's first frame, as if the daemon had been
// running all along.
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
	if p.trigger == config.TriggerGuestFrame && !p.frameSeen {
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
			dm.untrack(p)
			delete(dm.ports, key)
		}
		dm.gaugePorts()
		return
	}
	dm.links[l.Index] = l
	if op := dm.ports[ovsKey(l.Name)]; op != nil {
		// The name moved from Open vSwitch to a Linux bridge (a stale
		// OVSDB row, a reused vnetN): netlink's master wins.
		dm.leave(op, "on a Linux bridge")
		dm.untrack(op)
		delete(dm.ports, op.key)
	}
	p := dm.ports[key]
	if p == nil {
		if p = dm.track(l); p == nil {
			return
		}
	} else if p.name != l.Name {
		// A renamed port may now match a different rule, or none.
		dm.leave(p, "renamed")
		dm.untrack(p)
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
	if tr == config.TriggerXenStart {
		dm.followStart(p)
	}
	if tr != config.TriggerManual {
		dm.prefetch(p)
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
	if !ready || p.announced || p.inflight || p.retry != nil {
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
	case config.TriggerXenStart:
		if p.started {
			dm.arrive(p, byXenStart, now)
		}
	}
}

// leave resets a port's arrival when it detaches, loses carrier or goes
// away: its running burst ends, its pending work is dropped, and its next
// arrival is announced anew. Only the guests this port takes part in are
// touched. A sibling whose arrival this port's burst covered, and which
// stays ready, is announced now: traffic goes through it from here on.
func (dm *Daemon) leave(p *port, why string) {
	p.ready = false
	p.announced = false
	p.frameSeen = false
	p.resumed = false
	p.frameMAC = nil
	p.inflight = false
	p.attempt = 0
	p.gen++
	if p.retry != nil {
		p.retry.Stop()
		p.retry = nil
	}
	var handover []*port
	for key := range p.guests {
		delete(p.guests, key)
		gs := dm.guests[key]
		if gs == nil {
			continue
		}
		delete(gs.standby, p.key)
		if gs.pending == p.key {
			gs.pending = ""
			if gs.deferred != nil {
				gs.deferred.Stop()
				gs.deferred = nil
			}
		}
		if gs.starting == p.key {
			gs.starting = ""
			gs.lastStart, gs.owner = gs.prevStart, gs.prevOwner
		}
		if gs.owner == p.key {
			gs.owner = ""
			if dm.d.Engine.Cancel(key) {
				dm.d.Log.Info("burst cancelled", zap.String("port", p.name), zap.String("guest", key), zap.String("reason", why))
			}
			for sk := range gs.standby {
				delete(gs.standby, sk)
				if sp := dm.ports[sk]; sp != nil && netbackOverEmulated(p.name, sp.name) {
					// A netback vif losing carrier while its emulated
					// NIC's tap stays is the guest leaving this host (the
					// source's vif goes first) or dropping its PV driver:
					// announcing through the tap could pull the MAC back
					// to a host the guest has left.
					continue
				}
				if sp := dm.ports[sk]; sp != nil && sp.ready && sp.announced && !sp.inflight {
					handover = append(handover, sp)
					break
				}
			}
		}
		dm.maybeDrop(key, gs)
	}
	now := dm.d.Now()
	for _, sp := range handover {
		dm.d.Log.Info("sibling port takes over", zap.String("port", sp.name), zap.String("from", p.name))
		sp.announced = false
		dm.spawn(sp, byHandover, now, true)
	}
}

func (dm *Daemon) startListening(p *port) {
	if dm.d.ListenFrames == nil || p.listen != nil || p.ifindex == 0 || dm.closed {
		return
	}
	if p.relisten != nil {
		p.relisten.Stop()
		p.relisten = nil
	}
	l, err := dm.d.ListenFrames(p.ifindex)
	if err != nil {
		dm.d.Log.Warn("cannot listen for guest frames", zap.String("port", p.name), zap.Error(err))
		dm.relistenLater(p)
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
				dm.d.Log.Warn("guest-frame listener failed; listening again", zap.String("port", name), zap.Error(err))
				dm.listenerFailed(key, ctx)
			}
			return
		}
		dm.guestFrame(key, ctx, src, at)
	}()
}

// listenerFailed clears a failed listener so the port can trigger again,
// and listens anew after a backoff.
func (dm *Daemon) listenerFailed(key string, ctx context.Context) {
	dm.mu.Lock()
	defer dm.mu.Unlock()
	p := dm.ports[key]
	if p == nil || ctx.Err() != nil || dm.closed || p.listen == nil {
		return
	}
	p.listen()
	p.listen = nil
	dm.relistenLater(p)
}

// relistenBase doubles per consecutive failure up to relistenMax: a port
// whose device is gone for good costs one attempt every half minute.
const (
	relistenBase = 200 * time.Millisecond
	relistenMax  = 30 * time.Second
)

func (dm *Daemon) relistenLater(p *port) {
	if p.relisten != nil || dm.closed {
		return
	}
	d := relistenBase << min(p.listenFails, 20)
	if d > relistenMax {
		d = relistenMax
	}
	p.listenFails++
	key := p.key
	p.relisten = dm.afterFunc(d, func() {
		dm.mu.Lock()
		defer dm.mu.Unlock()
		if dm.ports[key] != p || dm.closed {
			return
		}
		p.relisten = nil
		if p.trigger == config.TriggerGuestFrame && !p.frameSeen {
			dm.startListening(p)
		}
	})
}

func (dm *Daemon) stopListening(p *port) {
	if p.listen != nil {
		p.listen()
		p.listen = nil
	}
	if p.relisten != nil {
		p.relisten.Stop()
		p.relisten = nil
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
	p.listenFails = 0
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

// untrack ends what a port that is being forgotten still runs.
func (dm *Daemon) untrack(p *port) {
	dm.stopListening(p)
	if p.stopStart != nil {
		p.stopStart()
		p.stopStart = nil
	}
}
