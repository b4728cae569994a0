package daemon

import (
	"time"

	"go.uber.org/zap"
)

// Resumed handles libvirt's RESUMED event with detail MIGRATED or POSTCOPY:
// the moment the domain really runs here. devs are its interfaces' target
// devices (vnetN). It covers a guest whose QEMU frames were lost and adds
// what QEMU never sends, but one arrival still gets one burst: when the
// guest-frame trigger already announced it, the event is suppressed.
func (dm *Daemon) Resumed(domain string, devs []string, at time.Time) {
	dm.mu.Lock()
	defer dm.mu.Unlock()
	if dm.closed {
		return
	}
	for _, dev := range devs {
		p := dm.portByName(dev)
		if p == nil {
			dm.d.Log.Debug("libvirt resume: interface not a followed port", zap.String("domain", domain), zap.String("dev", dev))
			continue
		}
		// A running guest is as good a sign as its first frame: if the
		// port is not ready yet, it is announced the moment it is.
		if !p.ready {
			p.resumed = true
			continue
		}
		if p.inflight || (p.announced && dm.recentlyAnnounced(p)) {
			dm.suppressed(dm.d.Log.With(zap.String("port", p.name), zap.String("trigger", byLibvirt)), "", "already announced for this arrival")
			continue
		}
		dm.arrive(p, byLibvirt, at)
	}
}

// recentlyAnnounced reports whether the guest behind p has a burst running
// or started within the holddown: the same arrival, seen twice.
func (dm *Daemon) recentlyAnnounced(p *port) bool {
	key := p.lastKey
	if key == "" {
		return false
	}
	if dm.d.Engine.Active(key) {
		return true
	}
	gs := dm.guests[key]
	return gs != nil && !gs.lastStart.IsZero() && dm.d.Now().Sub(gs.lastStart) < dm.cfg.FlapHolddown
}

func (dm *Daemon) portByName(name string) *port {
	for _, p := range dm.ports {
		if p.name == name {
			return p
		}
	}
	return nil
}
