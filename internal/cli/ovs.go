package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"go.uber.org/zap"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/config"
	"github.com/selfannounce/selfannounce/announce/daemon"
	"github.com/selfannounce/selfannounce/announce/linuxbr"
	"github.com/selfannounce/selfannounce/announce/openflow"
	"github.com/selfannounce/selfannounce/announce/ovs"
	"github.com/selfannounce/selfannounce/announce/plan"
)

var errNotOVS = errors.New("not an Open vSwitch port")

// checkOVSDB validates an ovs.db setting or --ovsdb value.
func checkOVSDB(addr string) error {
	if addr == "off" || addr == "" {
		return nil
	}
	return ovs.CheckAddr(addr)
}

func ofAction(cfg *config.Config) openflow.Action {
	a, _ := config.ParseOVSAction(cfg.OVSAction) // validated by config.Parse
	return openflow.Action{Resubmit: a.Resubmit, Table: a.Table}
}

// ovsSnapshot reads OVSDB once per process: the one-shot asks it for the
// guest's identity and then for the plan.
var ovsSnapshot = struct {
	mu    sync.Mutex
	addr  string
	ports []ovs.Port
	err   error
	done  bool
}{}

// ovsPorts returns OVSDB's ports, or errNotOVS when OVS support is off or no
// ovsdb-server runs here (its socket is absent).
func ovsPorts(ctx context.Context, cfg *config.Config) ([]ovs.Port, error) {
	addr := cfg.OVSDB
	if addr == "off" {
		return nil, errNotOVS
	}
	if addr == "" {
		addr = config.DefaultOVSDB
	}
	if err := ovs.CheckAddr(addr); err != nil {
		return nil, usageErr("%v", err)
	}
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		if _, err := os.Stat(path); err != nil {
			return nil, errNotOVS
		}
	}
	s := &ovsSnapshot
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.done || s.addr != addr {
		s.ports, s.err = ovs.Snapshot(ctx, addr)
		s.addr, s.done = addr, true
	}
	if s.err != nil {
		return nil, withCode(ExitUnreachable, fmt.Errorf("reading Open vSwitch database %s: %w", addr, s.err))
	}
	return s.ports, nil
}

// linuxBridgePort reports whether port is enslaved to a Linux bridge, in
// which case OVSDB need not be asked about it.
func linuxBridgePort(port string) bool {
	h := linuxbr.NewHost("/sys")
	m, err := h.Master(port)
	if err != nil || m == "" {
		return false
	}
	k, err := h.Kind(m)
	return err == nil && k == linuxbr.KindBridge
}

// planOVS plans a packet-out on an OVS port for the one-shot, on a session
// from pool, which the caller closes once the burst is over. It returns
// errNotOVS when OVSDB does not know the port, so the caller keeps the
// Linux-bridge error.
func planOVS(ctx context.Context, cfg *config.Config, pool *plan.OFPool, port string, g announce.Guest) (*plan.Plan, error) {
	ports, err := ovsPorts(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if _, ok := ovs.Find(ports, port); !ok {
		return nil, errNotOVS
	}
	o := plan.OVS{Ports: plan.StaticPorts(ports), Pool: pool, RunDir: cfg.OVSRundir, Action: ofAction(cfg)}
	return o.Plan(port, g)
}

// ovsGuest applies the OVS identity rule for the one-shot: an OVS port's
// external_ids:attached-mac names the guest unless a config guests entry
// matches; resolvers that agree on the MAC supply the addresses.
func ovsGuest(ctx context.Context, cfg *config.Config, port string, g announce.Guest, ok bool) (announce.Guest, bool) {
	if ok && g.Source == "config" || linuxBridgePort(port) {
		return g, ok
	}
	ports, err := ovsPorts(ctx, cfg)
	if err != nil {
		return g, ok
	}
	op, found := ovs.Find(ports, port)
	if !found || op.MAC == nil || announce.CheckGuestMAC(op.MAC) != nil {
		return g, ok
	}
	out := announce.Guest{MAC: op.MAC, Source: "ovsdb"}
	if ok && bytes.Equal(g.MAC, op.MAC) {
		out.IPs, out.Source = g.IPs, "ovsdb+"+g.Source
	}
	return out, true
}

// ovsPlanner plans daemon bursts from the live OVSDB view, with the
// action and socket directory of the config in force.
type ovsPlanner struct {
	mon  *ovs.Monitor
	pool *plan.OFPool
	cfg  *reloadable
}

func (p *ovsPlanner) Plan(port string, g announce.Guest) (*plan.Plan, error) {
	c := p.cfg.cfg()
	o := plan.OVS{Ports: p.mon, Pool: p.pool, RunDir: c.OVSRundir, Action: ofAction(c)}
	return o.Plan(port, g)
}

// Warm connects to the bridge's OpenFlow socket in the background.
func (p *ovsPlanner) Warm(bridge string) {
	p.pool.Warm(openflow.MgmtSocket(p.cfg.cfg().OVSRundir, bridge))
}

// startOVS follows Open vSwitch ports through an OVSDB monitor until ctx
// ends. Without an ovsdb-server it says so once and keeps trying in the
// background (the monitor backs off), so OVS started later is picked up.
// Changing ovs.db takes a restart; ovs.action and ovs.rundir apply on reload.
func startOVS(ctx context.Context, log *zap.Logger, dm *daemon.Daemon, r *reloadable) {
	cfg := r.cfg()
	if cfg.OVSDB == "off" {
		log.Info("Open vSwitch support off")
		return
	}
	if err := ovs.CheckAddr(cfg.OVSDB); err != nil {
		log.Error("Open vSwitch support off: "+err.Error(), zap.String("addr", cfg.OVSDB))
		return
	}
	olog := log.Named("ovs")
	mon := ovs.NewMonitor(cfg.OVSDB, olog)
	pool := plan.NewOFPool(olog)
	dm.SetOVS(&ovsPlanner{mon: mon, pool: pool, cfg: r})
	go func() {
		defer pool.Close()
		if err := mon.Run(ctx, dm.OVSInitial, dm.OVSEvent); err != nil {
			olog.Error("Open vSwitch monitor stopped", zap.Error(err))
		}
	}()
}
