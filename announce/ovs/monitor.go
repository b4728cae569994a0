package ovs

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ovn-kubernetes/libovsdb/cache"
	"github.com/ovn-kubernetes/libovsdb/client"
	"github.com/ovn-kubernetes/libovsdb/model"
	"go.uber.org/zap"
)

// DefaultAddr is where ovsdb-server listens on a stock installation.
const DefaultAddr = "unix:/var/run/openvswitch/db.sock"

const (
	dbName = "Open_vSwitch"

	connectTimeout = 10 * time.Second
	// settle lets the rest of a transaction reach libovsdb's cache before
	// the tables are joined, so one change yields one event.
	settle = 5 * time.Millisecond
	// probeInterval: an echo now and then catches a server that hangs
	// without closing the connection, and any disconnect notice missed.
	probeInterval = 5 * time.Second
	probeTimeout  = 5 * time.Second
)

// Monitor follows OVS ports through an OVSDB monitor on the Bridge, Port
// and Interface tables.
type Monitor struct {
	addr string
	log  *zap.Logger

	// MinBackoff and MaxBackoff bound the delay between reconnect attempts;
	// set them before Run.
	MinBackoff, MaxBackoff time.Duration

	mu    sync.Mutex
	state map[string]Port
	ready bool
}

// NewMonitor returns a monitor for the OVSDB server at addr ("unix:/path"
// or "tcp:host:port"; "" means DefaultAddr). log may be nil.
func NewMonitor(addr string, log *zap.Logger) *Monitor {
	if addr == "" {
		addr = DefaultAddr
	}
	if log == nil {
		log = zap.NewNop()
	}
	return &Monitor{addr: addr, log: log, MinBackoff: 200 * time.Millisecond, MaxBackoff: 10 * time.Second}
}

// CheckAddr rejects addresses that are not in OVS's unix: or tcp: syntax.
func CheckAddr(addr string) error {
	switch {
	case strings.HasPrefix(addr, "unix:") && len(addr) > len("unix:"):
		return nil
	case strings.HasPrefix(addr, "tcp:"):
		rest := addr[len("tcp:"):]
		if i := strings.LastIndexByte(rest, ':'); i > 0 && i < len(rest)-1 {
			return nil
		}
	}
	return fmt.Errorf("ovs: OVSDB address %q: want unix:/path or tcp:host:port", addr)
}

// Run connects, monitors, calls initial with every port once the first full
// state has arrived, then fn for every change to a Port field. When the
// server goes away it reconnects with backoff, re-reads the state and
// reports only what differs from what it last reported, so a restart of
// ovsdb-server re-announces nothing. initial and fn run on Run's goroutine
// and should return quickly. Run returns nil when ctx ends and an error
// only for an unusable address. A Monitor runs at most one Run at a time.
func (m *Monitor) Run(ctx context.Context, initial func([]Port), fn func(Event)) error {
	if err := CheckAddr(m.addr); err != nil {
		return err
	}
	backoff := m.MinBackoff
	failures := 0
	for {
		synced, err := m.session(ctx, initial, fn)
		if ctx.Err() != nil {
			return nil
		}
		if synced {
			backoff, failures = m.MinBackoff, 0
			m.log.Warn("OVSDB connection lost, reconnecting", zap.String("addr", m.addr), zap.Error(err))
		} else {
			// Say it once per outage, not on every retry.
			failures++
			lvl := zap.DebugLevel
			if failures == 1 {
				lvl = zap.WarnLevel
			}
			m.log.Log(lvl, "cannot reach OVSDB, retrying", zap.String("addr", m.addr), zap.Error(err), zap.Duration("retry", backoff))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, m.MaxBackoff)
	}
}

// Lookup returns the current state of the interface called name, as of the
// last event delivered (or the last state seen before a disconnect).
func (m *Monitor) Lookup(name string) (Port, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.state[name]
	return p, ok
}

// Ports returns the current state of every port, sorted by bridge and name.
func (m *Monitor) Ports() []Port {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Port, 0, len(m.state))
	for _, p := range m.state {
		out = append(out, p)
	}
	sortPorts(out)
	return out
}

// session runs one connection until it fails; synced tells whether it got
// as far as reading the full state.
func (m *Monitor) session(ctx context.Context, initial func([]Port), fn func(Event)) (synced bool, err error) {
	dirty := make(chan struct{}, 1)
	cl, err := connect(ctx, m.addr, func() {
		select {
		case dirty <- struct{}{}:
		default:
		}
	})
	if err != nil {
		return false, err
	}
	defer cl.Close()
	// libovsdb drops its disconnect notice when nobody is receiving, so a
	// goroutine waits for it while we are busy reading or calling back.
	gone := make(chan struct{})
	over := make(chan struct{})
	defer close(over)
	go func() {
		select {
		case <-cl.DisconnectNotify():
			close(gone)
		case <-over:
		}
	}()

	publish := func() error {
		ports, unknown, err := read(ctx, cl)
		if err != nil {
			return err
		}
		m.mu.Lock()
		first := !m.ready
		var evs []Event
		if !first {
			carryEphemeral(m.state, ports, unknown)
			evs = diff(m.state, ports)
		}
		m.state, m.ready = index(ports), true
		m.mu.Unlock()
		if first {
			m.log.Info("OVSDB state read", zap.String("addr", m.addr), zap.Int("ports", len(ports)))
			if initial != nil {
				initial(ports)
			}
			return nil
		}
		for _, e := range evs {
			m.log.Debug("OVS port event", zap.Stringer("event", e))
			if fn != nil {
				fn(e)
			}
		}
		return nil
	}
	// After a reconnect this diff against the last state is what reports
	// changes made while we were away, and nothing else.
	if err := publish(); err != nil {
		return false, err
	}
	probe := time.NewTicker(probeInterval)
	defer probe.Stop()
	for {
		select {
		case <-ctx.Done():
			return true, ctx.Err()
		case <-gone:
			return true, errors.New("ovs: OVSDB server disconnected")
		case <-probe.C:
			pctx, cancel := context.WithTimeout(ctx, probeTimeout)
			err := cl.Echo(pctx)
			cancel()
			if err != nil {
				return true, fmt.Errorf("ovs: OVSDB echo: %w", err)
			}
		case <-dirty:
			select {
			case <-time.After(settle):
			case <-ctx.Done():
				return true, ctx.Err()
			}
			select {
			case <-dirty:
			default:
			}
			if err := publish(); err != nil {
				return true, err
			}
		}
	}
}

func clientModel() (model.ClientDBModel, error) {
	return model.NewClientDBModel(dbName, map[string]model.Model{
		"Bridge":    &bridgeRow{},
		"Port":      &portRow{},
		"Interface": &ifaceRow{},
	})
}

// connect opens a client and starts a monitor on just the columns Port is
// built from, so the statistics OVS rewrites every few seconds never reach
// us. changed is called after each cache change.
func connect(ctx context.Context, addr string, changed func()) (client.Client, error) {
	dbm, err := clientModel()
	if err != nil {
		return nil, fmt.Errorf("ovs: %w", err)
	}
	cl, err := client.NewOVSDBClient(dbm, client.WithEndpoint(addr))
	if err != nil {
		return nil, fmt.Errorf("ovs: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	if err := cl.Connect(cctx); err != nil {
		return nil, fmt.Errorf("ovs: connect %s: %w", addr, err)
	}
	if changed != nil {
		cl.Cache().AddEventHandler(&cache.EventHandlerFuncs{
			AddFunc:    func(string, model.Model) { changed() },
			UpdateFunc: func(string, model.Model, model.Model) { changed() },
			DeleteFunc: func(string, model.Model) { changed() },
		})
	}
	var (
		b bridgeRow
		p portRow
		i ifaceRow
	)
	mon := cl.NewMonitor(
		client.WithTable(&b, &b.Name, &b.Ports, &b.DatapathType),
		client.WithTable(&p, &p.Name, &p.Interfaces, &p.Tag, &p.Trunks, &p.VLANMode),
		client.WithTable(&i, &i.Name, &i.Type, &i.OFPort, &i.ExternalIDs, &i.LinkState, &i.AdminState),
	)
	if _, err := cl.Monitor(cctx, mon); err != nil {
		cl.Close()
		return nil, fmt.Errorf("ovs: monitor %s: %w", addr, err)
	}
	return cl, nil
}

func read(ctx context.Context, cl client.Client) ([]Port, map[string]uint8, error) {
	var (
		bridges []bridgeRow
		ports   []portRow
		ifaces  []ifaceRow
	)
	if err := cl.List(ctx, &bridges); err != nil {
		return nil, nil, fmt.Errorf("ovs: read Bridge table: %w", err)
	}
	if err := cl.List(ctx, &ports); err != nil {
		return nil, nil, fmt.Errorf("ovs: read Port table: %w", err)
	}
	if err := cl.List(ctx, &ifaces); err != nil {
		return nil, nil, fmt.Errorf("ovs: read Interface table: %w", err)
	}
	ps, unknown := buildPorts(bridges, ports, ifaces)
	return ps, unknown, nil
}

// Snapshot reads every port once, for one-shot commands.
func Snapshot(ctx context.Context, addr string) ([]Port, error) {
	if addr == "" {
		addr = DefaultAddr
	}
	if err := CheckAddr(addr); err != nil {
		return nil, err
	}
	cl, err := connect(ctx, addr, nil)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ps, _, err := read(ctx, cl)
	return ps, err
}

// Find returns the port with interface name from ports.
func Find(ports []Port, name string) (Port, bool) {
	for _, p := range ports {
		if p.Name == name {
			return p, true
		}
	}
	return Port{}, false
}
