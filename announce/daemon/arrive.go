package daemon

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/burst"
	"github.com/selfannounce/selfannounce/announce/linuxbr"
	"github.com/selfannounce/selfannounce/announce/netwatch"
	"github.com/selfannounce/selfannounce/announce/plan"
	"github.com/selfannounce/selfannounce/announce/resolve"
)

// stopper is a pending deferred burst (a *time.Timer outside tests).
type stopper interface{ Stop() bool }

// resolveTimeout bounds a resolver round trip (xenstore, file reads): an
// arrival must not hang behind a wedged xenstored.
const resolveTimeout = 2 * time.Second

// arrive handles one arrival of p, detected by `by` at `at`.
func (dm *Daemon) arrive(p *port, by string, at time.Time) {
	p.announced = true
	if m := dm.d.Metrics; m != nil {
		m.Arrivals.Inc()
		m.LastArrival.Set(float64(at.UnixNano()) / 1e9)
	}
	dm.announce(p, by, at)
}

// announce resolves the guest, applies the one-burst-per-arrival and flap
// rules, and starts the burst.
func (dm *Daemon) announce(p *port, by string, at time.Time) {
	log := dm.d.Log.With(zap.String("port", p.name), zap.String("trigger", by))
	g, err := dm.identify(p)
	if err != nil {
		log.Warn("not announced: "+err.Error(), zap.String("port", p.name))
		if m := dm.d.Metrics; m != nil {
			m.ResolveFailures.Inc()
		}
		return
	}
	key := g.MAC.String()
	gs := dm.guests[key]
	if gs == nil {
		gs = &guest{}
		dm.guests[key] = gs
	}
	now := dm.d.Now()
	if dm.d.Engine.Active(key) {
		// The same guest through its other port (vifN.M and its -emu
		// tap), or a second signal of the same arrival (libvirt resume
		// after QEMU's frame): one burst per arrival.
		dm.suppressed(log, key, "a burst for this MAC is already running")
		return
	}
	if hold := dm.cfg.FlapHolddown; !gs.lastStart.IsZero() && now.Sub(gs.lastStart) < hold {
		if gs.owner != "" && gs.owner != p.key {
			// The port that announced moments ago is still there: this
			// is the same arrival seen through the guest's other port
			// (the -emu tap's RARP, then the vif's carrier), not a flap.
			dm.suppressed(log, key, "announced moments ago through another port")
			return
		}
		// Flap guard: defer to the end of the holddown rather than drop,
		// so the last arrival of a flapping guest is still announced.
		gs.pending = p.key
		if gs.deferred == nil {
			gs.deferred = dm.afterFunc(gs.lastStart.Add(hold).Sub(now), func() { dm.fireDeferred(key) })
		}
		dm.suppressed(log, key, "flap guard: deferred to the end of the holddown")
		return
	}
	dm.start(p, g, gs, by, at, log)
}

func (dm *Daemon) suppressed(log *zap.Logger, mac, why string) {
	log.Debug("burst suppressed", zap.String("mac", mac), zap.String("reason", why))
	if m := dm.d.Metrics; m != nil {
		m.Bursts.WithLabelValues("suppressed").Inc()
	}
}

func (dm *Daemon) fireDeferred(mac string) {
	dm.mu.Lock()
	defer dm.mu.Unlock()
	gs := dm.guests[mac]
	if gs == nil || dm.closed {
		return
	}
	gs.deferred = nil
	p := dm.ports[gs.pending]
	gs.pending = ""
	if p == nil || !p.ready || !p.announced {
		return
	}
	dm.announce(p, "flap-deferred", dm.d.Now())
}

// identify asks the resolvers, falls back to the triggering frame's source
// for guest-frame ports, and drops anything this host owns.
func (dm *Daemon) identify(p *port) (announce.Guest, error) {
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	var g announce.Guest
	ok := false
	var rerr error
	if dm.d.Resolve != nil {
		g, ok, rerr = dm.d.Resolve(ctx, p.name)
	}
	if p.backend == ovsBridge {
		g, ok = dm.ovsIdentity(p, g, ok)
	}
	if !ok && p.trigger == "guest-frame" && p.frameMAC != nil && announce.CheckGuestMAC(p.frameMAC) == nil {
		g, ok = announce.Guest{MAC: p.frameMAC, Source: "frame"}, true
	}
	if !ok {
		if rerr != nil {
			return g, errf("no resolver knows the guest (%v)", rerr)
		}
		return g, errf("no resolver knows the guest")
	}
	var ips []netip.Addr
	if dm.d.HostIPs != nil && len(g.IPs) > 0 {
		var err error
		if ips, err = dm.d.HostIPs(ctx); err != nil {
			return g, errf("cannot list this host's addresses: %v", err)
		}
	}
	return resolve.DropHostOwned(g, dm.hostMACs(g.MAC), ips)
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
// arrival allocated, and the garbage collections it caused landed on later
// arrivals' latency.
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
	return linuxbr.TableLink{Link: linuxbr.Link{Name: l.Name, Index: l.Index, MAC: l.MAC}, Kind: l.Kind, Master: l.Master}
}

func (dm *Daemon) start(p *port, g announce.Guest, gs *guest, by string, at time.Time, log *zap.Logger) {
	planner := dm.d.Linux
	if p.backend == ovsBridge {
		planner = dm.d.OVS
	}
	if planner == nil {
		log.Error("no sender for this port's backend")
		return
	}
	var pl *plan.Plan
	var err error
	if tp, ok := planner.(LinkTablePlanner); ok && p.backend == linuxBridge {
		pl, err = tp.PlanLinks(dm.bridgeTable(p), p.name, g)
	} else {
		pl, err = planner.Plan(p.name, g)
	}
	if err != nil {
		log.Warn("not announced: "+err.Error(), zap.Stringer("mac", g.MAC))
		return
	}
	if pl.Repair != nil {
		ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
		_, err := pl.Repair(ctx)
		cancel()
		if err != nil {
			log.Warn("not announced: bridge repair failed: "+err.Error(), zap.Stringer("mac", g.MAC))
			return
		}
	}
	key := g.MAC.String()
	gs.lastStart = dm.d.Now()
	gs.owner = p.key
	m := dm.d.Metrics
	ips := g.IPs
	name := p.name
	err = dm.d.Engine.Start(&burst.Burst{
		Key:      key,
		Packets:  pl.Packets,
		Schedule: dm.cfg.Schedule,
		// Done runs on the engine's goroutine, sometimes inside Cancel
		// while dm.mu is held: it must only log and count.
		Done: func(r burst.Result) {
			result := "completed"
			if r.Cancelled {
				result = "cancelled"
			}
			fields := []zap.Field{zap.String("port", name), zap.String("mac", key), zap.Stringers("ips", ips),
				zap.String("trigger", by), zap.String("source", g.Source), zap.String("result", result),
				zap.Int("frames", r.Frames), zap.Int("rounds", r.Rounds)}
			if !r.FirstFrame.IsZero() {
				lat := r.FirstFrame.Sub(at)
				fields = append(fields, zap.Duration("latency", lat))
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
		log.Error("burst not started", zap.Error(err))
		return
	}
	if m != nil {
		m.Bursts.WithLabelValues("started").Inc()
	}
}
