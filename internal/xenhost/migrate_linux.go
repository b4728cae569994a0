//go:build linux

package xenhost

import (
	"context"
	"net"
	"time"

	"github.com/selfannounce/selfannounce/internal/lab"
)

// FloorMAC is the source of the latency floor's frame.
var FloorMAC = net.HardwareAddr{0x02, 0, 0, 0, 0xf1, 0}

// PingInterval is the client's ping interval in Xen migrations: TCG
// makes everything slow, 10 ms would measure the emulator.
const PingInterval = 100 * time.Millisecond

// Move is one observed live migration in the Xen layout.
type Move struct {
	Domain string // xl domain name
	Cfg    string // destination config (its vif on To)
	From   string // bridge the guest is on now
	To     string // bridge of Cfg
	OldVif string // the guest's vif now, vif<domid>.0
	// Floor sends the latency floor's frame on To's uplink at carrier.
	Floor bool
	// After is how long the client keeps pinging after carrier.
	After time.Duration
	// Label names the report line.
	Label    string
	Deadline time.Duration
}

// Moved is what a migration looked like from dom0.
type Moved struct {
	DomID   int
	Vif     string    // the destination vif
	Carrier time.Time // when its carrier was read from rtnetlink
	FloorAt time.Time // when the floor's frame was written (Floor)
	Took    time.Duration
	Report  lab.Report
}

// MigrateObserved migrates m.Domain while the client pings it: it first
// teaches the switch and the other bridge where the guest is (Meet), then
// runs `xl migrate -C`, reads the destination vif's carrier, keeps pinging
// m.After longer and reports what the client lost and where the switch
// and the destination bridge forward the guest's MAC. Wire captures are
// the caller's: start them before, stop them after.
func (h *Host) MigrateObserved(ctx context.Context, l *lab.XenLab, m Move) (*Moved, error) {
	if err := l.Meet(m.From); err != nil {
		return nil, err
	}
	var frame []byte
	dev := ""
	if m.Floor {
		frame, dev = FloorFrame(FloorMAC), lab.XenUplink(m.To)
	}
	w, err := WatchCarrier(m.OldVif, dev, frame)
	if err != nil {
		return nil, err
	}
	defer w.Close()
	p, err := l.StartOpenPing(PingInterval)
	if err != nil {
		return nil, err
	}
	stopped := false
	defer func() {
		if !stopped {
			p.Stop()
		}
	}()
	time.Sleep(time.Second)
	start := time.Now()
	id, err := h.Migrate(ctx, m.Domain, m.Cfg, m.Deadline)
	if err != nil {
		return nil, err
	}
	mv := &Moved{DomID: id, Took: time.Since(start)}
	if mv.Vif, mv.Carrier, err = w.Carrier(90 * time.Second); err != nil {
		return nil, h.wrap("destination vif carrier", err)
	}
	w.mu.Lock()
	mv.FloorAt = w.floorAt
	w.mu.Unlock()
	time.Sleep(time.Until(mv.Carrier.Add(m.After)))
	stopped = true
	mv.Report = l.XenReport(m.Label, p.Stop(), m.To)
	// A guest that died on resume answered nothing after carrier: that is
	// the emulator's, and Crash says so.
	if c := h.Crash(); c != "" {
		return mv, &CrashError{Step: "after xl migrate " + m.Domain, Lines: c, Err: context.Canceled}
	}
	return mv, nil
}
