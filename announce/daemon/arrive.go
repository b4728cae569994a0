package daemon

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/burst"
	"github.com/selfannounce/selfannounce/announce/config"
	"github.com/selfannounce/selfannounce/announce/linuxbr"
	"github.com/selfannounce/selfannounce/announce/netwatch"
	"github.com/selfannounce/selfannounce/announce/plan"
	"github.com/selfannounce/selfannounce/announce/resolve"
)

// stopper is a pending timer (a *time.Timer outside tests).
type stopper interface{ Stop() bool }

// resolveTimeout bounds a resolver round trip (xenstore, file reads) and an
// FDB repair: a worker must not hang for ever behind a wedged xenstored.
const resolveTimeout = 2 * time.Second

// Retries of an arrival that failed for a reason that can pass (a resolver
// error, no uplink yet, a repair that failed or timed out, a reload in the
// middle): retryBase doubling, at most maxRetries times, about 6 s in all.
const (
	retryBase  = 200 * time.Millisecond
	retryMax   = 3200 * time.Millisecond
	maxRetries = 5
)

func backoff(attempt int) time.Duration {
	d := retryBase << max(0, attempt-1)
	if d > retryMax || d <= 0 {
		d = retryMax
	}
	return d
}

// arrival is one attempt at announcing a port's arrival. Everything the
// worker needs from the daemon's state is copied into it under dm.mu, so
// the slow part (resolvers, address dump, sysfs, FDB repair) runs with the
// lock released and the event loop keeps going.
type arrival struct {
	key      string
	p        *port
	gen      uint64
	cfgGen   uint64
	by       string
	at       time.Time
	handover bool // a sibling port's burst ended with its port: no holddown
	name     string
	backend  backend
	trigger  config.Trigger
	frameMAC net.HardwareAddr
	cached   *announce.Guest
	cfg      *config.Config
	// When each step of the attempt ended, for the burst log: where an
	// arrival's latency went (identity, plan, repair, then the engine).
	tWork, tIdent, tPlan, tRepair time.Time
}

// arrive starts handling one arrival of p, detected by `by` at `at`. The
// port counts as announced only once a burst started for it, or another
// port's burst or the flap guard took it over; a failed attempt is retried.
func (dm *Daemon) arrive(p *port, by string, at time.Time) {
	if p.inflight {
		return
	}
	if m := dm.d.Metrics; m != nil && p.attempt == 0 {
		m.Arrivals.Inc()
		m.LastArrival.Set(float64(at.UnixNano()) / 1e9)
	}
	dm.spawn(p, by, at, false)
}

func (dm *Daemon) spawn(p *port, by string, at time.Time, handover bool) {
	if dm.closed {
		return
	}
	if p.retry != nil {
		p.retry.Stop()
		p.retry = nil
	}
	p.inflight = true
	a := &arrival{key: p.key, p: p, gen: p.gen, cfgGen: dm.cfgGen, by: by, at: at, handover: handover,
		name: p.name, backend: p.backend, trigger: p.trigger, cfg: dm.cfg,
		frameMAC: append(net.HardwareAddr(nil), p.frameMAC...)}
	if p.ident != nil {
		g := *p.ident
		a.cached = &g
	}
	dm.wg.Add(1)
	go dm.work(a)
}

// current reports, under dm.mu, whether a's port is still the one it was
// started for, in the same arrival.
func (dm *Daemon) current(a *arrival) bool {
	return !dm.closed && dm.ports[a.key] == a.p && a.p.gen == a.gen && a.p.ready
}

// work runs one arrival attempt off the event loop.
func (dm *Daemon) work(a *arrival) {
	defer dm.wg.Done()
	a.tWork = dm.d.Now()
	log := dm.d.Log.With(zap.String("port", a.name), zap.String("trigger", a.by))

	// Identity, off the lock: cached from the port's appearance, or asked now.
	g, ok, rerr := announce.Guest{}, false, error(nil)
	if a.cached != nil {
		g, ok = *a.cached, true
	} else if dm.d.Resolve != nil {
		ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
		g, ok, rerr = dm.d.Resolve(ctx, a.name)
		cancel()
	}
	var ips []netip.Addr
	var ipErr error
	if ok && dm.d.HostIPs != nil && len(g.IPs) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
		ips, ipErr = dm.d.HostIPs(ctx)
		cancel()
	}
	a.tIdent = dm.d.Now()

	dm.mu.Lock()
	if !dm.current(a) {
		dm.abandon(a)
		dm.mu.Unlock()
		return
	}
	if ok && a.cached == nil && g.Source != "" {
		c := g
		a.p.ident = &c
	}
	if a.backend == ovsBridge {
		g, ok = dm.ovsIdentity(a.p, g, ok)
	}
	if !ok && a.trigger == config.TriggerGuestFrame && a.cfg.TrustGuestFrameMAC && a.frameMAC != nil && announce.CheckGuestMAC(a.frameMAC) == nil {
		g, ok = announce.Guest{MAC: a.frameMAC, Source: "frame"}, true
	}
	if !ok {
		if m := dm.d.Metrics; m != nil {
			m.ResolveFailures.Inc()
		}
		if rerr != nil {
			dm.failed(a, log, true, errf("no resolver knows the guest (%v)", rerr))
		} else {
			dm.failed(a, log, false, errf("no resolver knows the guest"))
		}
		dm.mu.Unlock()
		return
	}
	if ipErr != nil {
		dm.failed(a, log, true, errf("cannot list this host's addresses: %v", ipErr))
		dm.mu.Unlock()
		return
	}
	g, err := resolve.DropHostOwned(g, dm.hostMACs(g.MAC), ips)
	if err != nil {
		dm.failed(a, log, false, err)
		dm.mu.Unlock()
		return
	}
	planner := dm.d.Linux
	if a.backend == ovsBridge {
		planner = dm.d.OVS
	}
	var table []linuxbr.TableLink
	tp, useTable := planner.(LinkTablePlanner)
	if useTable && a.backend == linuxBridge {
		table = append(table, dm.bridgeTable(a.p)...)
	}
	dm.mu.Unlock()

	if planner == nil {
		log.Error("no sender for this port's backend")
		dm.mu.Lock()
		dm.failed(a, log, true, errf("no sender for this port's backend"))
		dm.mu.Unlock()
		return
	}
	// The plan, off the lock: it may read sysfs and the VLAN table.
	var pl *plan.Plan
	if useTable && a.backend == linuxBridge {
		pl, err = tp.PlanLinks(table, a.name, g)
	} else {
		pl, err = planner.Plan(a.name, g)
	}
	a.tPlan = dm.d.Now()
	dm.mu.Lock()
	if !dm.current(a) {
		dm.abandon(a)
		dm.mu.Unlock()
		return
	}
	if err != nil {
		dm.failed(a, log.With(zap.Stringer("mac", g.MAC)), !permanent(err), err)
		dm.mu.Unlock()
		return
	}
	key := guestKey(pl, g)
	gs, proceed := dm.decide(a, key, log)
	dm.mu.Unlock()
	if !proceed {
		return
	}

	if pl.Repair != nil {
		ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
		_, err = pl.Repair(ctx)
		cancel()
	}
	a.tRepair = dm.d.Now()
	dm.mu.Lock()
	defer dm.mu.Unlock()
	if !dm.current(a) {
		dm.unreserve(a.p, key, gs)
		dm.abandon(a)
		return
	}
	if err != nil {
		dm.unreserve(a.p, key, gs)
		dm.failed(a, log.With(zap.Stringer("mac", g.MAC)), !permanent(err), errf("bridge repair failed: %v", err))
		return
	}
	if dm.cfgGen != a.cfgGen {
		// Reloaded while this attempt ran: plan again with the new rules.
		dm.unreserve(a.p, key, gs)
		dm.failed(a, log, true, errf("config reloaded during the arrival"))
		return
	}
	if err := dm.startBurst(a, g, pl, key, gs, log); err != nil {
		dm.unreserve(a.p, key, gs)
		dm.failed(a, log, false, errf("burst not started: %v", err))
		return
	}
	a.p.inflight = false
	a.p.announced = true
	a.p.attempt = 0
}

// permanent reports whether a plan or repair error says that trying again
// cannot help (an FDB entry the repair refuses to move, say): such an
// error implements Permanent() bool. Anything else may pass, and is retried.
func permanent(err error) bool {
	var p interface{ Permanent() bool }
	return errors.As(err, &p) && p.Permanent()
}

// guestKey is what one guest is, for bursts and the flap guard: the same
// MAC on another bridge or VLAN is another guest (Neutron makes MACs unique
// per network only).
func guestKey(pl *plan.Plan, g announce.Guest) string {
	return pl.Bridge + "/" + strconv.Itoa(int(pl.VLAN)) + "/" + g.MAC.String()
}

// decide applies the one-burst-per-arrival and flap rules under dm.mu. It
// reports whether a's burst goes ahead; then the guest is reserved for a's
// port until the burst starts or the attempt fails.
func (dm *Daemon) decide(a *arrival, key string, log *zap.Logger) (*guest, bool) {
	p := a.p
	gs := dm.guests[key]
	if gs == nil {
		gs = &guest{}
		dm.guests[key] = gs
	}
	dm.own(p, key, gs)
	p.lastKey = key
	now := dm.d.Now()
	if owner := dm.ports[gs.owner]; owner != nil && owner != p && gs.starting == "" && netbackOverEmulated(p.name, owner.name) {
		// An HVM guest with PV drivers: its emulated NIC's tap was
		// announced when the domain started, and netback's carrier now
		// says netfront has connected. The guest's traffic goes through
		// the vif from here on, so the vif takes over at once, holddown
		// or not. The tap is not kept in standby: see leave.
		if dm.d.Engine.Cancel(key) {
			log.Info("burst cancelled", zap.String("guest", key), zap.String("reason", "the guest's PV NIC took over from "+owner.name))
		}
		delete(gs.standby, p.key)
		a.handover = true
	}
	if (dm.d.Engine.Active(key) || gs.starting != "") && gs.owner != p.key {
		// The same guest through its other port (vifN.M and its -emu
		// tap): one burst per arrival. This port takes over if the
		// other leaves while it stays (see leave).
		dm.standby(p, key, gs)
		dm.done(a)
		dm.suppressed(log, key, "a burst for this guest is already running")
		return nil, false
	}
	if dm.d.Engine.Active(key) || gs.starting != "" {
		// A second signal of the same arrival (libvirt resume after
		// QEMU's frame).
		dm.done(a)
		dm.suppressed(log, key, "a burst for this guest is already running")
		return nil, false
	}
	if hold := a.cfg.FlapHolddown; !a.handover && !gs.lastStart.IsZero() && now.Sub(gs.lastStart) < hold {
		if gs.owner != "" && gs.owner != p.key {
			// The port that announced moments ago is still there: this
			// is the same arrival seen through the guest's other port
			// (the -emu tap's RARP, then the vif's carrier), not a flap.
			dm.standby(p, key, gs)
			dm.done(a)
			dm.suppressed(log, key, "announced moments ago through another port")
			return nil, false
		}
		// Flap guard: defer to the end of the holddown rather than drop,
		// so the last arrival of a flapping guest is still announced.
		gs.pending = p.key
		if gs.deferred == nil {
			gs.deferred = dm.afterFunc(gs.lastStart.Add(hold).Sub(now), func() { dm.fireDeferred(key) })
		}
		dm.done(a)
		dm.suppressed(log, key, "flap guard: deferred to the end of the holddown")
		return nil, false
	}
	gs.starting = p.key
	gs.prevStart, gs.prevOwner = gs.lastStart, gs.owner
	gs.lastStart, gs.owner = now, p.key
	return gs, true
}

// done ends an arrival attempt that was handled without a burst of its own.
func (dm *Daemon) done(a *arrival) {
	a.p.inflight = false
	a.p.announced = true
	a.p.attempt = 0
}

// abandon ends an attempt whose arrival is over (the port left, or was
// replaced): the port's next arrival starts afresh.
func (dm *Daemon) abandon(a *arrival) {
	if a.p.gen == a.gen {
		a.p.inflight = false
	}
}

// unreserve undoes decide's reservation after a failed attempt.
func (dm *Daemon) unreserve(p *port, key string, gs *guest) {
	if gs.starting != p.key {
		return
	}
	gs.starting = ""
	if gs.owner == p.key {
		gs.lastStart, gs.owner = gs.prevStart, gs.prevOwner
	}
	dm.maybeDrop(key, gs)
}

// failed logs a failed attempt, and retries it with backoff when the cause
// can pass and the port is still in the same arrival.
func (dm *Daemon) failed(a *arrival, log *zap.Logger, transient bool, err error) {
	p := a.p
	p.inflight = false
	p.ident = nil // ask the resolvers again next time
	if !transient || p.attempt >= maxRetries || dm.closed {
		log.Warn("not announced: " + err.Error())
		p.announced = true // handled: the next arrival is the port's next one
		p.attempt = 0
		return
	}
	p.attempt++
	d := backoff(p.attempt)
	log.Info("arrival failed, retrying", zap.Error(err), zap.Int("attempt", p.attempt), zap.Duration("in", d))
	if m := dm.d.Metrics; m != nil {
		m.ArrivalRetries.Inc()
	}
	key, gen, by, at := p.key, p.gen, a.by, a.at
	p.retry = dm.afterFunc(d, func() {
		dm.mu.Lock()
		defer dm.mu.Unlock()
		if q := dm.ports[key]; q == p && p.gen == gen && p.ready && !p.announced && !p.inflight && !dm.closed {
			p.retry = nil
			dm.spawn(p, by, at, false)
		}
	})
}

// steps is the attempt's time line, from the arrival event: when the
// worker ran, and when identity, plan and FDB repair were done.
func (a *arrival) steps() zap.Field {
	d := func(t time.Time) time.Duration {
		if t.IsZero() || a.at.IsZero() {
			return 0
		}
		return t.Sub(a.at)
	}
	return zap.Dict("steps", zap.Duration("worker", d(a.tWork)), zap.Duration("identity", d(a.tIdent)),
		zap.Duration("plan", d(a.tPlan)), zap.Duration("repair", d(a.tRepair)))
}

func (dm *Daemon) startBurst(a *arrival, g announce.Guest, pl *plan.Plan, key string, gs *guest, log *zap.Logger) error {
	gs.starting = ""
	m := dm.d.Metrics
	ips := g.IPs
	name, by, at := a.name, a.by, a.at
	mac := g.MAC.String()
	steps := a.steps()
	err := dm.d.Engine.Start(&burst.Burst{
		Key:      key,
		Packets:  pl.Packets,
		Schedule: a.cfg.Schedule,
		// Done runs on the engine's goroutine, sometimes inside Cancel
		// while dm.mu is held: it must only log and count.
		Done: func(r burst.Result) {
			result := "completed"
			if r.Cancelled {
				result = "cancelled"
			}
			fields := []zap.Field{zap.String("port", name), zap.String("mac", mac), zap.String("bridge", pl.Bridge),
				zap.Uint16("vlan", pl.VLAN), zap.Stringers("ips", ips),
				zap.String("trigger", by), zap.String("source", g.Source), zap.String("result", result),
				zap.Int("frames", r.Frames), zap.Int("rounds", r.Rounds)}
			if !r.FirstFrame.IsZero() {
				lat := r.FirstFrame.Sub(at)
				fields = append(fields, zap.Duration("latency", lat), steps)
				if m != nil {
					m.Latency.Observe(lat.Seconds())
					m.LastBurst.Set(float64(r.FirstFrame.UnixNano()) / 1e9)
				}
			}
			if r.Failed > 0 {
				fields = append(fields, zap.Int("failed", r.Failed), zap.Error(r.Err))
			}
			if m != nil {
				m.Bursts.WithLabelValues(result).Inc()
			}
			dm.d.Log.Info("burst", fields...)
		},
	})
	if err != nil {
		return err
	}
	if m != nil {
		m.Bursts.WithLabelValues("started").Inc()
	}
	return nil
}

func (dm *Daemon) suppressed(log *zap.Logger, key, why string) {
	log.Debug("burst suppressed", zap.String("guest", key), zap.String("reason", why))
	if m := dm.d.Metrics; m != nil {
		m.Bursts.WithLabelValues("suppressed").Inc()
	}
}

func (dm *Daemon) fireDeferred(key string) {
	dm.mu.Lock()
	defer dm.mu.Unlock()
	gs := dm.guests[key]
	if gs == nil || dm.closed {
		return
	}
	gs.deferred = nil
	p := dm.ports[gs.pending]
	gs.pending = ""
	if p == nil || !p.ready || !p.announced || p.inflight {
		dm.maybeDrop(key, gs)
		return
	}
	p.announced = false
	dm.spawn(p, "flap-deferred", dm.d.Now(), false)
}

// own records that p takes part in gs (index for leave), and keeps gs from
// being dropped.
func (dm *Daemon) own(p *port, key string, gs *guest) {
	if p.guests == nil {
		p.guests = map[string]bool{}
	}
	p.guests[key] = true
	if gs.gc != nil {
		gs.gc.Stop()
		gs.gc = nil
	}
}

func (dm *Daemon) standby(p *port, key string, gs *guest) {
	if gs.standby == nil {
		gs.standby = map[string]bool{}
	}
	gs.standby[p.key] = true
}

// maybeDrop forgets a guest no port takes part in once its holddown has
// passed: dm.guests holds the guests behind current ports, plus the ones
// that left within the holddown, not every MAC ever seen.
func (dm *Daemon) maybeDrop(key string, gs *guest) {
	if gs.owner != "" || gs.pending != "" || gs.starting != "" || len(gs.standby) > 0 || dm.guests[key] != gs {
		return
	}
	left := gs.lastStart.Add(dm.cfg.FlapHolddown).Sub(dm.d.Now())
	if gs.lastStart.IsZero() || left <= 0 {
		if gs.deferred != nil {
			gs.deferred.Stop()
		}
		if gs.gc != nil {
			gs.gc.Stop()
		}
		delete(dm.guests, key)
		return
	}
	if gs.gc == nil {
		gs.gc = dm.afterFunc(left, func() {
			dm.mu.Lock()
			defer dm.mu.Unlock()
			if dm.guests[key] == gs {
				gs.gc = nil
				dm.maybeDrop(key, gs)
			}
		})
	}
}

// hostMACs returns the host's own MACs equal to mac: those of links that are
// not VM ports (a VM port's MAC is fe:ff:ff:ff:ff:ff or derived from its
// guest's, and stands for the guest). The link table follows every
// rtnetlink event, so it is as fresh as a dump and costs none.
func (dm *Daemon) hostMACs(mac net.HardwareAddr) []net.HardwareAddr {
	var out []net.HardwareAddr
	for _, l := range dm.links {
		if len(mac) > 0 && bytes.Equal(l.MAC, mac) && !dm.cfg.IsVMPort(l.Name) {
			out = append(out, l.MAC)
		}
	}
	return out
}

// bridgeTable is the part of the link table a Linux-bridge port's path is
// resolved from: the port, its bridge and the bridge's other ports. It is
// built in dm.table, reused from one arrival to the next (under dm.mu): with
// hundreds of ports on a bridge a fresh copy per arrival was most of what an
// arrival allocated. The caller copies what it keeps past dm.mu.
func (dm *Daemon) bridgeTable(p *port) []linuxbr.TableLink {
	out := dm.table[:0]
	defer func() { dm.table = out }()
	l, ok := dm.links[p.ifindex]
	if !ok {
		return out
	}
	out = append(out, tableLink(l))
	if l.Master == 0 {
		return out
	}
	if br, ok := dm.links[l.Master]; ok {
		out = append(out, tableLink(br))
	}
	for _, o := range dm.links {
		if o.Master == l.Master && o.Index != l.Index {
			out = append(out, tableLink(o))
		}
	}
	return out
}

func tableLink(l netwatch.Link) linuxbr.TableLink {
	return linuxbr.TableLink{Link: linuxbr.Link{Name: l.Name, Index: l.Index, MAC: l.MAC}, Kind: l.Kind, Master: l.Master,
		State: linuxbr.PortState{Down: !l.OperUp, STP: linuxbr.BRState(l.STP)}, HasState: true}
}

// prefetch resolves a port's guest when the port appears, long before its
// arrival (the Xen backend writes the MAC at the vif's creation), so the
// arrival itself needs no resolver round trip. Only answers are cached;
// a miss or an error is asked again at the arrival.
func (dm *Daemon) prefetch(p *port) {
	if dm.d.Resolve == nil || dm.closed {
		return
	}
	cfgGen, name := dm.cfgGen, p.name
	dm.wg.Add(1)
	go func() {
		defer dm.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
		g, ok, _ := dm.d.Resolve(ctx, name)
		cancel()
		if !ok {
			return
		}
		dm.mu.Lock()
		defer dm.mu.Unlock()
		if dm.ports[p.key] == p && dm.cfgGen == cfgGen && p.ident == nil {
			p.ident = &g
		}
	}()
}

// netbackOverEmulated reports whether port is the netback vif of the guest
// NIC whose emulated tap is other (vifN.M over vifN.M-emu with xl, over
// tapN.M on XenServer).
func netbackOverEmulated(port, other string) bool {
	d, n, ok := resolve.ParseXenPort(port)
	od, on, ook := resolve.ParseXenPort(other)
	netback := strings.HasPrefix(port, "vif") && !strings.HasSuffix(port, "-emu")
	return ok && ook && netback && port != other && d == od && n == on
}
