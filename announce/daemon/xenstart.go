package daemon

import (
	"go.uber.org/zap"

	"github.com/selfannounce/selfannounce/announce/resolve"
	"github.com/selfannounce/selfannounce/announce/xenstart"
)

// followStart asks when the domain behind a xen-start port starts here.
// A port that names no domain, or a daemon without xenstore, falls back to
// carrier: the tap's readiness is then the arrival.
func (dm *Daemon) followStart(p *port) {
	domid, _, ok := resolve.ParseXenPort(p.name)
	if !ok || dm.d.XenStarted == nil {
		p.started = true
		return
	}
	p.stopStart = dm.d.XenStarted(domid, func(ev xenstart.Event) { dm.xenStarted(p, ev) })
}

// xenStarted handles a domain's start. An xl rename seen while the port
// was followed is a committed incoming migration, announced even when the
// port counted as announced at daemon start (it was bridged while the
// domain was still paused). A domain found already running is announced
// when its port becomes ready, as carrier would; and when xenstore cannot
// tell, the port falls back to carrier too, which is what the tap's
// readiness would say without this trigger.
func (dm *Daemon) xenStarted(p *port, ev xenstart.Event) {
	dm.mu.Lock()
	defer dm.mu.Unlock()
	if dm.closed || dm.ports[p.key] != p || p.started {
		return
	}
	p.started = true
	p.stopStart = nil
	log := dm.d.Log.With(zap.String("port", p.name))
	switch {
	case ev.Unknown:
		log.Warn("xenstore cannot tell whether the domain has started; announcing on carrier", zap.Error(ev.Err))
	case ev.Renamed:
		log.Debug("Xen domain started here (xl renamed it from its incoming name)")
		if p.announced && !p.inflight && p.retry == nil && !dm.recentlyAnnounced(p) {
			p.announced = false
		}
	}
	if p.ready && !p.announced && !p.inflight && p.retry == nil {
		dm.arrive(p, byXenStart, ev.At)
	}
}
