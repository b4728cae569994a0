package daemon

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/burst"
	"github.com/selfannounce/selfannounce/announce/config"
	"github.com/selfannounce/selfannounce/announce/frame"
	"github.com/selfannounce/selfannounce/announce/metrics"
	"github.com/selfannounce/selfannounce/announce/netwatch"
	"github.com/selfannounce/selfannounce/announce/plan"
	"github.com/selfannounce/selfannounce/announce/schedule"
	"github.com/selfannounce/selfannounce/announce/xenstart"
)

// The daemon runs here against a real burst engine; the OS boundary is
// faked: links are fed as netwatch values, the planner writes real frames
// to a recording wire, guest frames are fired by hand, and time is a fake
// clock. Tests assert what reached the wire.

// wire records every frame the engine wrote, decoded enough to assert on.
type wire struct {
	clk    *clock
	mu     sync.Mutex
	frames []onWire
}

type onWire struct {
	at   time.Time
	via  string
	kind string // from the ethertype: rarp, garp, na
	src  string // source MAC
	ip   netip.Addr
}

func (w *wire) record(via string, b []byte) {
	f := onWire{at: w.clk.now(), via: via, src: net.HardwareAddr(b[6:12]).String()}
	switch binary.BigEndian.Uint16(b[12:14]) {
	case 0x8035:
		f.kind = "rarp"
	case 0x0806:
		f.kind = "garp"
		f.ip = netip.AddrFrom4([4]byte(b[28:32]))
	case 0x86dd:
		f.kind = "na"
		f.ip = netip.AddrFrom16([16]byte(b[62:78]))
	default:
		f.kind = "?"
	}
	w.mu.Lock()
	w.frames = append(w.frames, f)
	w.mu.Unlock()
}

func (w *wire) all() []onWire {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]onWire(nil), w.frames...)
}

type uplink struct {
	w    *wire
	name string
}

func (u uplink) WriteFrame(b []byte) error { u.w.record(u.name, b); return nil }

// planner builds real rounds, one per uplink, as plan.Linux does.
type planner struct {
	w         *wire
	uplinks   []string
	mu        sync.Mutex
	repairErr error
	planErr   map[string]error  // by port
	planned   int               // frames of every first round planned
	lastPort  string            // the port of the latest plan
	bridges   map[string]string // by port; xenbr0 when unset
	vlans     map[string]uint16 // by port
}

func (p *planner) Plan(port string, g announce.Guest) (*plan.Plan, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.planErr[port]; err != nil {
		return nil, err
	}
	p.lastPort = port
	fs, err := frame.Round(g, 0)
	if err != nil {
		return nil, err
	}
	pl := &plan.Plan{Port: port, Backend: "linux-bridge", Bridge: "xenbr0", Guest: g}
	for _, f := range fs {
		for _, u := range p.uplinks {
			pl.Packets = append(pl.Packets, burst.Packet{W: uplink{p.w, u}, Kind: f.Kind.String(), Data: f.Data})
		}
	}
	if b := p.bridges[port]; b != "" {
		pl.Bridge = b
	}
	pl.VLAN = p.vlans[port]
	rerr := p.repairErr
	n := len(pl.Packets)
	// Counted when repaired: only an arrival that goes ahead is repaired.
	pl.Repair = func(context.Context) (bool, error) {
		if rerr == nil {
			p.mu.Lock()
			p.planned += n
			p.mu.Unlock()
		}
		return rerr == nil, rerr
	}
	return pl, nil
}

// clock is the daemon's time and its flap-guard timers.
type clock struct {
	mu     sync.Mutex
	t      time.Time
	timers []*fakeTimer
	// fired runs after each timer's function, so the engine's frames are
	// stamped with the time the timer fired.
	fired func()
}

type fakeTimer struct {
	c       *clock
	at      time.Time
	f       func()
	stopped bool
	fired   bool
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	active := !t.stopped && !t.fired
	t.stopped = true
	return active
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) afterFunc(d time.Duration, f func()) stopper {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: c.t.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

func (c *clock) pendingTimers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.timers {
		if !t.stopped && !t.fired {
			n++
		}
	}
	return n
}

// advance moves time on by d, firing due timers in order at their time.
func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	end := c.t.Add(d)
	c.mu.Unlock()
	for {
		c.mu.Lock()
		var next *fakeTimer
		for _, t := range c.timers {
			if !t.stopped && !t.fired && !t.at.After(end) && (next == nil || t.at.Before(next.at)) {
				next = t
			}
		}
		if next == nil {
			c.t = end
			c.mu.Unlock()
			return
		}
		next.fired = true
		if next.at.After(c.t) {
			c.t = next.at
		}
		c.mu.Unlock()
		next.f()
		if c.fired != nil {
			c.fired()
		}
	}
}

// listeners hands out guest-frame listeners the test can fire.
type listeners struct {
	mu     sync.Mutex
	open   map[int][]*fakeListener
	failOn map[int]bool
}

type fakeListener struct {
	ls      *listeners
	ifindex int
	frames  chan net.HardwareAddr
	broken  chan struct{}
	closed  chan struct{}
	once    sync.Once
}

func (ls *listeners) listen(ifindex int) (FrameListener, error) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.failOn[ifindex] {
		return nil, errors.New("no such device")
	}
	l := &fakeListener{ls: ls, ifindex: ifindex, frames: make(chan net.HardwareAddr), broken: make(chan struct{}), closed: make(chan struct{})}
	ls.open[ifindex] = append(ls.open[ifindex], l)
	return l, nil
}

func (l *fakeListener) Wait(ctx context.Context) (net.HardwareAddr, time.Time, error) {
	select {
	case <-ctx.Done():
		return nil, time.Time{}, ctx.Err()
	case src := <-l.frames:
		return src, time.Now(), nil
	case <-l.broken:
		return nil, time.Time{}, errors.New("recvmsg: network is down")
	}
}

// breakAll makes every listener on ifindex fail, as a packet socket does
// when its device goes away under it, and returns once the daemon has
// closed them.
func (ls *listeners) breakAll(ifindex int) int {
	ls.mu.Lock()
	open := append([]*fakeListener(nil), ls.open[ifindex]...)
	ls.mu.Unlock()
	for _, l := range open {
		close(l.broken)
		select {
		case <-l.closed:
		case <-time.After(10 * time.Second):
			panic("broken listener never closed")
		}
	}
	return len(open)
}

func (l *fakeListener) Close() error {
	l.once.Do(func() {
		l.ls.mu.Lock()
		open := l.ls.open[l.ifindex]
		for i, x := range open {
			if x == l {
				l.ls.open[l.ifindex] = append(open[:i:i], open[i+1:]...)
				break
			}
		}
		l.ls.mu.Unlock()
		close(l.closed)
	})
	return nil
}

func (ls *listeners) count() int {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	n := 0
	for _, o := range ls.open {
		n += len(o)
	}
	return n
}

// fire delivers a guest frame from src on ifindex and returns once the
// daemon has handled it; false when nothing listens there.
func (ls *listeners) fire(ifindex int, src string) bool {
	mac, err := net.ParseMAC(src)
	if err != nil {
		panic(err)
	}
	ls.mu.Lock()
	open := append([]*fakeListener(nil), ls.open[ifindex]...)
	ls.mu.Unlock()
	for _, l := range open {
		select {
		case l.frames <- mac:
			select {
			case <-l.closed: // the daemon's listener goroutine is done
			case <-time.After(10 * time.Second):
				panic("guest frame never handled")
			}
			return true
		case <-l.closed:
		case <-time.After(10 * time.Second):
			panic("listener neither waits nor closes")
		}
	}
	return false
}

type harness struct {
	t      *testing.T
	cfg    *config.Config
	dm     *Daemon
	eng    *burst.Engine
	wire   *wire
	plan   *planner
	ls     *listeners
	clk    *clock
	m      *metrics.Metrics
	mu     sync.Mutex
	guests map[string]announce.Guest // by port name
	resErr error
	hostIP []netip.Addr
	hostEr error
	t0     time.Time
	xen    *fakeXen
}

// oneRound makes every burst a single round, so after settle the wire holds
// everything an arrival will ever send.
var oneRound = schedule.Schedule{Initial: time.Millisecond, Max: time.Millisecond, Rounds: 1}

// longBurst keeps a burst running (its second round 100 s away) so tests
// can see whether it is cancelled.
var longBurst = schedule.Schedule{Initial: 100 * time.Second, Max: 100 * time.Second, Rounds: 2}

func newHarness(t *testing.T, mutate func(c *config.Config)) *harness {
	t.Helper()
	cfg := config.Default()
	cfg.Schedule = oneRound
	if mutate != nil {
		mutate(cfg)
	}
	h := &harness{t: t, cfg: cfg, guests: map[string]announce.Guest{}}
	h.t0 = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	h.clk = &clock{t: h.t0}
	h.clk.fired = h.settle
	h.wire = &wire{clk: h.clk}
	h.plan = &planner{w: h.wire, uplinks: []string{"eth0", "eth1"}, planErr: map[string]error{}}
	h.ls = &listeners{open: map[int][]*fakeListener{}, failOn: map[int]bool{}}
	h.xen = &fakeXen{follows: map[int][]func(xenstart.Event){}}
	h.m = metrics.New()
	h.eng = burst.New(1_000_000, h.m)
	h.dm = New(cfg, Deps{
		Log:     zap.NewNop(),
		Engine:  h.eng,
		Linux:   h.plan,
		Metrics: h.m,
		Resolve: func(ctx context.Context, port string) (announce.Guest, bool, error) {
			h.mu.Lock()
			defer h.mu.Unlock()
			g, ok := h.guests[port]
			return g, ok, h.resErr
		},
		HostIPs: func(context.Context) ([]netip.Addr, error) {
			h.mu.Lock()
			defer h.mu.Unlock()
			return h.hostIP, h.hostEr
		},
		ListenFrames: h.ls.listen,
		XenStarted:   h.xen.follow,
		Now:          h.clk.now,
	})
	h.dm.afterFunc = h.clk.afterFunc
	t.Cleanup(func() {
		h.dm.Close()
		h.eng.Close()
	})
	return h
}

func (h *harness) guest(port, mac string, ips ...string) {
	g := announce.Guest{MAC: mustMAC(mac), Source: "test"}
	for _, s := range ips {
		g.IPs = append(g.IPs, netip.MustParseAddr(s))
	}
	h.mu.Lock()
	h.guests[port] = g
	h.mu.Unlock()
}

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// Topology: bridge xenbr0 (1) with uplink eth0 (2); VM ports get indexes
// from 10 on.
var (
	bridge = netwatch.Link{Index: 1, Name: "xenbr0", Kind: "bridge", AdminUp: true, OperUp: true, STP: netwatch.STPUnknown}
	eth0   = netwatch.Link{Index: 2, Name: "eth0", Master: 1, AdminUp: true, OperUp: true, STP: netwatch.STPForwarding}
)

// ready is a VM port attached to xenbr0, up, with carrier, forwarding.
func ready(index int, name string) netwatch.Link {
	return netwatch.Link{Index: index, Name: name, Kind: "tun", Master: 1, AdminUp: true, OperUp: true, STP: netwatch.STPForwarding}
}

func down(l netwatch.Link) netwatch.Link { l.OperUp = false; return l }

func (h *harness) start(links ...netwatch.Link) {
	h.dm.Initial(append([]netwatch.Link{bridge, eth0}, links...))
	h.settle()
}

func (h *harness) link(l netwatch.Link) {
	h.dm.Link(netwatch.Event{Link: l})
	h.settle()
}

func (h *harness) del(l netwatch.Link) {
	h.dm.Link(netwatch.Event{Link: l, Deleted: true})
	h.settle()
}

func (h *harness) fire(l netwatch.Link, mac string) {
	h.t.Helper()
	if !h.ls.fire(l.Index, mac) {
		h.t.Fatalf("no guest-frame listener on %s", l.Name)
	}
	h.settle()
}

// settle waits for every finite burst to finish, so the wire is complete.
// Long bursts are waited for by their first round only.
func (h *harness) settle() {
	// Arrival workers first: they run off the event loop.
	h.dm.wait()
	if h.cfg.Schedule == longBurst {
		// Only first rounds go out within a test: wait for every one
		// planned (a burst cancelled before its first frame would make
		// this wait out the deadline, and the assertions then fail).
		deadline := time.Now().Add(10 * time.Second)
		for {
			h.plan.mu.Lock()
			want := h.plan.planned
			h.plan.mu.Unlock()
			if len(h.wire.all()) >= want || time.Now().After(deadline) {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.eng.Wait(ctx); err != nil {
		h.t.Fatalf("bursts never ended: %v", err)
	}
}

// bursts counts the arrivals announced for mac: one RARP per uplink each.
func (h *harness) bursts(mac string) int {
	n := 0
	for _, f := range h.wire.all() {
		if f.kind == "rarp" && f.src == mac {
			n++
		}
	}
	return n / len(h.plan.uplinks)
}

func (h *harness) burstTimes(mac string) []time.Duration {
	var out []time.Duration
	for _, f := range h.wire.all() {
		if f.kind == "rarp" && f.src == mac && f.via == "eth0" {
			out = append(out, f.at.Sub(h.t0))
		}
	}
	return out
}

func (h *harness) wantBursts(mac string, want int) {
	h.t.Helper()
	if got := h.bursts(mac); got != want {
		h.t.Fatalf("%s announced %d times, want %d; wire: %v", mac, got, want, h.describe())
	}
}

func (h *harness) wantSilence() {
	h.t.Helper()
	if fs := h.wire.all(); len(fs) != 0 {
		h.t.Fatalf("%d frames on the wire, want none: %v", len(fs), h.describe())
	}
}

func (h *harness) describe() string {
	var b strings.Builder
	for _, f := range h.wire.all() {
		fmt.Fprintf(&b, "\n  %v %s %s %s %v", f.at.Sub(h.t0), f.via, f.kind, f.src, f.ip)
	}
	return b.String()
}

func (h *harness) metric(name string, labels ...string) float64 {
	switch name {
	case "bursts":
		return toFloat(h.m.Bursts.WithLabelValues(labels...))
	case "frames":
		return toFloat(h.m.Frames.WithLabelValues(labels...))
	case "arrivals":
		return toFloat(h.m.Arrivals)
	case "resolve_failures":
		return toFloat(h.m.ResolveFailures)
	case "retries":
		return toFloat(h.m.ArrivalRetries)
	case "ports":
		return toFloat(h.m.Ports.WithLabelValues(labels...))
	}
	panic(name)
}

// gk is the burst key of a guest on xenbr0 without a VLAN.
func gk(mac string) string { return "xenbr0/0/" + mac }

const (
	macA = "52:54:00:00:00:0a"
	macB = "52:54:00:00:00:0b"
)

func TestCarrierArrivalSendsOneRoundPerUplink(t *testing.T) {
	h := newHarness(t, nil)
	vif := ready(10, "vif5.0")
	h.guest("vif5.0", macA, "192.0.2.10", "2001:db8::10")
	h.start(down(vif))
	h.wantSilence()

	h.link(vif)
	got := h.wire.all()
	var seq []string
	for _, f := range got {
		if f.src != macA {
			t.Fatalf("frame from %s, want the guest's %s", f.src, macA)
		}
		seq = append(seq, f.kind+"@"+f.via)
	}
	want := "rarp@eth0 rarp@eth1 garp@eth0 garp@eth1 na@eth0 na@eth1"
	if strings.Join(seq, " ") != want {
		t.Fatalf("wire %v, want %s", seq, want)
	}
	if got[2].ip != netip.MustParseAddr("192.0.2.10") || got[4].ip != netip.MustParseAddr("2001:db8::10") {
		t.Errorf("announced addresses %v, %v", got[2].ip, got[4].ip)
	}
	if h.metric("arrivals") != 1 || h.metric("bursts", "started") != 1 || h.metric("bursts", "completed") != 1 ||
		h.metric("frames", "rarp") != 2 || h.metric("frames", "garp") != 2 || h.metric("frames", "na") != 2 {
		t.Errorf("metrics: arrivals %v started %v completed %v frames rarp %v garp %v na %v",
			h.metric("arrivals"), h.metric("bursts", "started"), h.metric("bursts", "completed"),
			h.metric("frames", "rarp"), h.metric("frames", "garp"), h.metric("frames", "na"))
	}
	if h.metric("ports", "ready") != 1 || h.metric("ports", "waiting") != 0 {
		t.Errorf("ports gauge ready %v waiting %v", h.metric("ports", "ready"), h.metric("ports", "waiting"))
	}
	var lat dto.Metric
	if err := h.m.Latency.Write(&lat); err != nil || lat.Histogram.GetSampleCount() != 1 {
		t.Errorf("latency histogram has %d samples, want 1", lat.Histogram.GetSampleCount())
	}
	// Further events for a port that stays ready are the same arrival.
	h.link(vif)
	h.wantBursts(macA, 1)
}

func TestReadinessNeedsEveryCondition(t *testing.T) {
	other := netwatch.Link{Index: 3, Name: "virbr9", Kind: "bridge", AdminUp: true, OperUp: true, STP: netwatch.STPUnknown}
	bond := netwatch.Link{Index: 4, Name: "bond0", Kind: "bond", AdminUp: true, OperUp: true, STP: netwatch.STPUnknown}
	cases := []struct {
		name string
		mod  func(l *netwatch.Link)
	}{
		{"detached", func(l *netwatch.Link) { l.Master = 0; l.STP = netwatch.STPUnknown }},
		{"master not a bridge", func(l *netwatch.Link) { l.Master = bond.Index }},
		{"bridge not watched", func(l *netwatch.Link) { l.Master = other.Index }},
		{"unknown master", func(l *netwatch.Link) { l.Master = 99 }},
		{"admin down", func(l *netwatch.Link) { l.AdminUp = false }},
		{"no carrier", func(l *netwatch.Link) { l.OperUp = false }},
		{"stp listening", func(l *netwatch.Link) { l.STP = netwatch.STPListening }},
		{"stp learning", func(l *netwatch.Link) { l.STP = netwatch.STPLearning }},
		{"stp blocking", func(l *netwatch.Link) { l.STP = netwatch.STPBlocking }},
		{"stp disabled", func(l *netwatch.Link) { l.STP = netwatch.STPDisabled }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, func(c *config.Config) { c.Bridges = []string{"xenbr*"} })
			h.guest("vif5.0", macA)
			vif := ready(10, "vif5.0")
			h.start(down(vif), other, bond)
			nr := vif
			c.mod(&nr)
			h.link(nr)
			h.wantSilence()
			if h.metric("ports", "waiting") != 1 {
				t.Errorf("ports waiting %v, want 1", h.metric("ports", "waiting"))
			}
			h.link(vif)
			h.wantBursts(macA, 1)
		})
	}
}

// Conditions arriving one event at a time, in the order XenServer produces
// them: the arrival is the last one, whichever it is.
func TestReadinessBuiltUpStepByStep(t *testing.T) {
	h := newHarness(t, nil)
	h.guest("vif5.0", macA)
	l := netwatch.Link{Index: 10, Name: "vif5.0", STP: netwatch.STPUnknown}
	h.start()
	h.link(l)
	l.Master, l.STP = 1, netwatch.STPDisabled
	h.link(l)
	l.AdminUp = true
	h.link(l)
	l.STP = netwatch.STPListening
	h.link(l)
	l.STP = netwatch.STPLearning
	h.link(l)
	l.STP = netwatch.STPForwarding
	h.link(l)
	h.wantSilence()
	l.OperUp = true
	h.link(l)
	h.wantBursts(macA, 1)
}

func TestPortsReadyAtStart(t *testing.T) {
	links := []netwatch.Link{ready(10, "vif5.0"), ready(11, "vnet0"), ready(12, "manual0")}
	rules := func(c *config.Config) {
		c.Ports = append([]config.PortRule{{Match: "manual*", Trigger: config.TriggerManual}}, config.DefaultPorts...)
	}
	setup := func(h *harness) {
		h.guest("vif5.0", macA)
		h.guest("vnet0", macB)
		h.guest("manual0", "52:54:00:00:00:0c")
	}

	t.Run("not announced", func(t *testing.T) {
		h := newHarness(t, rules)
		setup(h)
		h.start(links...)
		h.wantSilence()
		// A tap's readiness says nothing (QEMU opens it long before an
		// incoming migration's guest runs): its first frame is the
		// arrival, also when the daemon started after the tap (#11 item 10).
		h.fire(links[1], macB)
		h.wantBursts(macB, 1)
		h.wantBursts(macA, 0)
		if h.metric("ports", "ready") != 3 {
			t.Errorf("ports ready %v, want 3", h.metric("ports", "ready"))
		}
		// Leaving and coming back is a new arrival.
		h.clk.advance(5 * time.Second)
		h.link(down(links[0]))
		h.link(links[0])
		h.wantBursts(macA, 1)
	})
	t.Run("announce-existing", func(t *testing.T) {
		h := newHarness(t, func(c *config.Config) { rules(c); c.AnnounceExisting = true })
		setup(h)
		h.start(links...)
		h.wantBursts(macA, 1)
		h.wantBursts(macB, 1)
		h.wantBursts("52:54:00:00:00:0c", 0)
		// The guest-frame port's first frame does not announce it again.
		h.fire(links[1], macB)
		h.wantBursts(macB, 1)
	})
}

func TestManualPortsNeverAnnounceThemselves(t *testing.T) {
	h := newHarness(t, func(c *config.Config) {
		c.Ports = []config.PortRule{{Match: "*", Trigger: config.TriggerManual}}
	})
	h.guest("vif5.0", macA)
	l := ready(10, "vif5.0")
	h.start(down(l))
	h.link(l)
	if h.ls.count() != 0 {
		t.Error("a manual port listens for guest frames")
	}
	h.wantSilence()
}

func TestGuestFrameTrigger(t *testing.T) {
	tap := ready(20, "vnet3")
	t.Run("frame after readiness", func(t *testing.T) {
		h := newHarness(t, nil)
		h.guest("vnet3", macA, "192.0.2.3")
		h.start()
		h.link(tap) // carrier from the moment QEMU opens it
		h.wantSilence()
		h.fire(tap, macA)
		h.wantBursts(macA, 1)
	})
	t.Run("frame before readiness", func(t *testing.T) {
		h := newHarness(t, nil)
		h.guest("vnet3", macA)
		h.start()
		detached := tap
		detached.Master, detached.STP = 0, netwatch.STPUnknown
		h.link(detached) // QEMU's RARP can come before the tap joins its bridge
		h.fire(tap, macA)
		h.wantSilence()
		learning := tap
		learning.STP = netwatch.STPLearning
		h.link(learning)
		h.wantSilence()
		h.link(tap)
		h.wantBursts(macA, 1)
	})
	optIn := func(c *config.Config) { c.TrustGuestFrameMAC = true }
	t.Run("no frame fallback by default", func(t *testing.T) {
		// A guest can put any MAC in a frame: without the opt-in, its
		// first frame's source never names it (#11 item 1).
		h := newHarness(t, nil)
		h.start(down(tap))
		h.link(tap)
		h.fire(tap, macB)
		h.wantSilence()
		if h.metric("resolve_failures") != 1 {
			t.Errorf("resolve failures %v, want 1", h.metric("resolve_failures"))
		}
	})
	t.Run("frame source when no resolver knows the guest", func(t *testing.T) {
		h := newHarness(t, optIn)
		h.start(down(tap))
		h.link(tap)
		h.fire(tap, macB)
		h.wantBursts(macB, 1)
		for _, f := range h.wire.all() {
			if f.kind != "rarp" {
				t.Errorf("a %s from a guest whose addresses nobody knows", f.kind)
			}
		}
	})
	t.Run("frame source when the resolver fails", func(t *testing.T) {
		h := newHarness(t, optIn)
		h.resErr = errors.New("xenstore: connection refused")
		h.start(down(tap))
		h.link(tap)
		h.fire(tap, macB)
		h.wantBursts(macB, 1)
	})
	t.Run("resolver wins over the frame", func(t *testing.T) {
		h := newHarness(t, nil)
		h.guest("vnet3", macA, "192.0.2.3")
		h.start(down(tap))
		h.link(tap)
		h.fire(tap, macB)
		h.wantBursts(macA, 1)
		h.wantBursts(macB, 0)
	})
	for _, bad := range []string{"fe:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "00:00:00:00:00:00"} {
		t.Run("no fallback to "+bad, func(t *testing.T) {
			h := newHarness(t, optIn)
			h.start(down(tap))
			h.link(tap)
			h.fire(tap, bad)
			h.wantSilence()
			if h.metric("resolve_failures") != 1 {
				t.Errorf("resolve failures %v, want 1", h.metric("resolve_failures"))
			}
		})
	}
	t.Run("carrier ports have no frame fallback", func(t *testing.T) {
		h := newHarness(t, nil)
		vif := ready(10, "vif5.0")
		h.start(down(vif))
		h.link(vif)
		h.wantSilence()
		if h.metric("resolve_failures") != 1 {
			t.Errorf("resolve failures %v, want 1", h.metric("resolve_failures"))
		}
	})
}

func TestGuestFramePortReArmsAfterLeaving(t *testing.T) {
	for _, leave := range []string{"carrier", "detach", "stp"} {
		t.Run(leave, func(t *testing.T) {
			h := newHarness(t, nil)
			tap := ready(20, "vnet3")
			h.guest("vnet3", macA)
			h.start(down(tap))
			h.link(tap)
			h.fire(tap, macA)
			h.wantBursts(macA, 1)

			h.clk.advance(5 * time.Second)
			gone := tap
			switch leave {
			case "carrier":
				gone.OperUp = false
			case "detach":
				gone.Master, gone.STP = 0, netwatch.STPUnknown
			case "stp":
				gone.STP = netwatch.STPBlocking
			}
			h.link(gone)
			h.link(tap)
			// Back, but the guest has not spoken since: not yet arrived.
			h.wantBursts(macA, 1)
			h.fire(tap, macA)
			h.wantBursts(macA, 2)
		})
	}
	t.Run("after start-up", func(t *testing.T) {
		// The listener a port ready at start-up used was consumed by the
		// guest's first frame; the next arrival needs a fresh one.
		h := newHarness(t, nil)
		tap := ready(20, "vnet3")
		h.guest("vnet3", macA)
		h.start(tap)
		h.fire(tap, macA)
		h.wantBursts(macA, 1)
		h.clk.advance(5 * time.Second)
		h.link(down(tap))
		h.link(tap)
		h.wantBursts(macA, 1)
		h.fire(tap, macA)
		h.wantBursts(macA, 2)
	})
}

func TestLeavingCancelsOnlyThatPortsBurst(t *testing.T) {
	for _, how := range []string{"carrier", "detach", "admin", "delete", "rename"} {
		t.Run(how, func(t *testing.T) {
			h := newHarness(t, func(c *config.Config) { c.Schedule = longBurst })
			a, b := ready(10, "vif5.0"), ready(11, "vif6.0")
			h.guest("vif5.0", macA)
			h.guest("vif6.0", macB)
			h.start(down(a), down(b))
			h.link(a)
			h.link(b)
			h.wantBursts(macA, 1)
			h.wantBursts(macB, 1)
			if !h.eng.Active(gk(macA)) || !h.eng.Active(gk(macB)) {
				t.Fatal("bursts not running")
			}
			switch how {
			case "carrier":
				h.link(down(a))
			case "detach":
				d := a
				d.Master, d.STP = 0, netwatch.STPUnknown
				h.link(d)
			case "admin":
				d := a
				d.AdminUp, d.OperUp = false, false
				h.link(d)
			case "delete":
				h.del(a)
			case "rename":
				d := a
				d.Name = "old5.0"
				h.link(d)
			}
			if h.eng.Active(gk(macA)) {
				t.Error("the leaving port's burst still runs")
			}
			if !h.eng.Active(gk(macB)) {
				t.Error("another port's burst was cancelled")
			}
			if h.metric("bursts", "cancelled") != 1 {
				t.Errorf("cancelled bursts %v, want 1", h.metric("bursts", "cancelled"))
			}
			// Returning later is a new arrival, announced again.
			h.clk.advance(5 * time.Second)
			if how != "delete" && how != "rename" {
				h.link(down(a))
			}
			h.link(a)
			h.wantBursts(macA, 2)
			h.wantBursts(macB, 1)
		})
	}
}

// Xen HVM: the vif (carrier) and its -emu tap (guest frame) are the same
// guest; one arrival must be one burst, whichever port is first.
func TestSameMACOnTwoPortsOneBurst(t *testing.T) {
	for _, vifFirst := range []bool{true, false} {
		t.Run(fmt.Sprintf("vif first %v", vifFirst), func(t *testing.T) {
			h := newHarness(t, func(c *config.Config) { c.Schedule = longBurst; emuByFrame(c) })
			vif, emu := ready(10, "vif5.0"), ready(11, "vif5.0-emu")
			h.guest("vif5.0", macA, "192.0.2.5")
			h.guest("vif5.0-emu", macA, "192.0.2.5")
			h.start(down(vif), down(emu))
			if vifFirst {
				h.link(vif)
				h.link(emu)
				h.fire(emu, macA)
			} else {
				h.link(emu)
				h.fire(emu, macA)
				h.link(vif)
			}
			if vifFirst {
				h.wantBursts(macA, 1)
				if h.metric("bursts", "suppressed") != 1 {
					t.Errorf("suppressed %v, want 1", h.metric("bursts", "suppressed"))
				}
			} else {
				// netback's carrier after the tap's arrival: the PV NIC
				// took over, and the guest's traffic goes through the vif
				// from now on, so the vif is announced at once.
				h.wantBursts(macA, 2)
				if h.metric("bursts", "suppressed") != 0 {
					t.Errorf("suppressed %v, want 0", h.metric("bursts", "suppressed"))
				}
				h.plan.mu.Lock()
				last := h.plan.lastPort
				h.plan.mu.Unlock()
				if last != "vif5.0" {
					t.Errorf("latest burst planned for %s, want vif5.0", last)
				}
			}
			// Either way the vif's burst runs, and the tap leaving does
			// not end it.
			h.link(down(emu))
			if !h.eng.Active(gk(macA)) {
				t.Error("the other port's leaving cancelled the burst")
			}
		})
	}
}

// hostNIC is a link of the host itself, on no bridge.
func hostNIC(index int, name, mac string) netwatch.Link {
	return netwatch.Link{Index: index, Name: name, MAC: mustMAC(mac), AdminUp: true, OperUp: true, STP: netwatch.STPUnknown}
}

func TestHostOwnedNeverAnnounced(t *testing.T) {
	t.Run("host MAC", func(t *testing.T) {
		h := newHarness(t, nil)
		vif := ready(10, "vif5.0")
		h.guest("vif5.0", macA)
		h.start(down(vif), hostNIC(30, "eth9", macA))
		h.link(vif)
		h.wantSilence()
	})
	t.Run("host MAC as frame source", func(t *testing.T) {
		h := newHarness(t, nil)
		tap := ready(20, "vnet3")
		h.start(down(tap), hostNIC(30, "eth9", macB))
		h.link(tap)
		h.fire(tap, macB)
		h.wantSilence()
	})
	// The host's MACs are the links' as the latest events describe them:
	// an interface given the guest's MAC after start-up owns it.
	t.Run("host MAC set after start", func(t *testing.T) {
		h := newHarness(t, nil)
		vif := ready(10, "vif5.0")
		h.guest("vif5.0", macA)
		h.start(down(vif), hostNIC(30, "eth9", macB))
		h.link(hostNIC(30, "eth9", macA))
		h.link(vif)
		h.wantSilence()
	})
	// A VM port's MAC stands for its guest (libvirt derives the tap's from
	// the guest's), not for the host.
	t.Run("VM port's MAC is not the host's", func(t *testing.T) {
		h := newHarness(t, nil)
		vif := ready(10, "vif5.0")
		h.guest("vif5.0", macA)
		other := down(ready(11, "vnet9"))
		other.MAC = mustMAC(macA)
		h.start(down(vif), other)
		h.link(vif)
		h.wantBursts(macA, 1)
	})
	t.Run("host addresses dropped", func(t *testing.T) {
		h := newHarness(t, nil)
		vif := ready(10, "vif5.0")
		h.guest("vif5.0", macA, "192.0.2.1", "192.0.2.10", "2001:db8::1", "2001:db8::10")
		h.hostIP = []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")}
		h.start(down(vif))
		h.link(vif)
		h.wantBursts(macA, 1)
		var ips []string
		for _, f := range h.wire.all() {
			if f.ip.IsValid() && f.via == "eth0" {
				ips = append(ips, f.ip.String())
			}
		}
		sort.Strings(ips)
		if strings.Join(ips, " ") != "192.0.2.10 2001:db8::10" {
			t.Errorf("announced %v, want only the guest's own addresses", ips)
		}
	})
	t.Run("host addresses unknown", func(t *testing.T) {
		h := newHarness(t, nil)
		vif := ready(10, "vif5.0")
		h.guest("vif5.0", macA, "192.0.2.10")
		h.hostEr = errors.New("netlink: permission denied")
		h.start(down(vif))
		h.link(vif)
		h.wantSilence()
	})
}

func TestPlanOrRepairFailureSendsNothing(t *testing.T) {
	h := newHarness(t, nil)
	a, b := ready(10, "vif5.0"), ready(11, "vif6.0")
	h.guest("vif5.0", macA)
	h.guest("vif6.0", macB)
	h.plan.planErr["vif6.0"] = errors.New("bridge xenbr0 has no uplink")
	h.start(down(a), down(b))
	h.link(b)
	h.wantSilence()
	h.plan.mu.Lock()
	h.plan.repairErr = errors.New("fdb: operation not permitted")
	h.plan.mu.Unlock()
	h.link(a)
	h.wantSilence()
}

// The flap guard with the shipped holddown: "a guest toggling its link 40
// times in 4 s yields at most 4 bursts, and a VM that leaves and returns 5 s
// later is announced both times" (config.DefaultHolddown).
func TestFlapGuardDefaultHolddown(t *testing.T) {
	toggle := func(t *testing.T, period time.Duration, n int) *harness {
		h := newHarness(t, nil)
		if h.cfg.FlapHolddown != config.DefaultHolddown {
			t.Fatalf("holddown %v, want the default", h.cfg.FlapHolddown)
		}
		vif := ready(10, "vif5.0")
		h.guest("vif5.0", macA)
		h.start(down(vif))
		h.link(vif)
		up := true
		for range n {
			h.clk.advance(period)
			up = !up
			if up {
				h.link(vif)
			} else {
				h.link(down(vif))
			}
		}
		h.clk.advance(10 * time.Second)
		if !up {
			t.Fatal("sequence must end with the link up")
		}
		return h
	}
	for _, period := range []time.Duration{100 * time.Millisecond, 50 * time.Millisecond, 170 * time.Millisecond} {
		t.Run(fmt.Sprintf("40 toggles every %v", period), func(t *testing.T) {
			n := 40
			if period*time.Duration(n) > 4*time.Second {
				n = int(4 * time.Second / period)
				n -= n % 2
			}
			h := toggle(t, period, n)
			times := h.burstTimes(macA)
			if len(times) < 1 || len(times) > 4 {
				t.Fatalf("%d toggles in %v gave %d bursts %v, want 1..4", n, period*time.Duration(n), len(times), times)
			}
			for i := 1; i < len(times); i++ {
				if d := times[i] - times[i-1]; d < config.DefaultHolddown {
					t.Errorf("bursts %v apart, less than the holddown: %v", d, times)
				}
			}
			// Deferred, not dropped: the guest is up at the end and its
			// last arrival was announced.
			last := period * time.Duration(n)
			if times[len(times)-1] < last {
				t.Errorf("last burst at %v, before the final arrival at %v: %v", times[len(times)-1], last, times)
			}
			if h.clk.pendingTimers() != 0 {
				t.Error("a deferred burst is still pending")
			}
		})
	}
	t.Run("leave and return 5s later", func(t *testing.T) {
		h := newHarness(t, nil)
		vif := ready(10, "vif5.0")
		h.guest("vif5.0", macA)
		h.start(down(vif))
		h.link(vif)
		h.clk.advance(time.Second)
		h.link(down(vif))
		h.clk.advance(5 * time.Second)
		h.link(vif)
		if got := h.burstTimes(macA); len(got) != 2 || got[1] != 6*time.Second {
			t.Fatalf("bursts at %v, want at 0 and 6s", got)
		}
	})
	t.Run("return inside the holddown is deferred", func(t *testing.T) {
		h := newHarness(t, nil)
		vif := ready(10, "vif5.0")
		h.guest("vif5.0", macA)
		h.start(down(vif))
		h.link(vif)
		h.clk.advance(200 * time.Millisecond)
		h.link(down(vif))
		h.clk.advance(200 * time.Millisecond)
		h.link(vif)
		h.wantBursts(macA, 1)
		if h.metric("bursts", "suppressed") != 1 {
			t.Errorf("suppressed %v, want 1", h.metric("bursts", "suppressed"))
		}
		h.clk.advance(5 * time.Second)
		if got := h.burstTimes(macA); len(got) != 2 || got[1] != config.DefaultHolddown {
			t.Fatalf("bursts at %v, want at 0 and at the end of the holddown", got)
		}
	})
	t.Run("deferred burst dropped when the port leaves again", func(t *testing.T) {
		h := newHarness(t, nil)
		vif := ready(10, "vif5.0")
		h.guest("vif5.0", macA)
		h.start(down(vif))
		h.link(vif)
		h.clk.advance(200 * time.Millisecond)
		h.link(down(vif))
		h.clk.advance(200 * time.Millisecond)
		h.link(vif)
		h.clk.advance(200 * time.Millisecond)
		h.link(down(vif))
		h.clk.advance(5 * time.Second)
		h.wantBursts(macA, 1)
	})
	t.Run("per MAC", func(t *testing.T) {
		h := newHarness(t, nil)
		a, b := ready(10, "vif5.0"), ready(11, "vif6.0")
		h.guest("vif5.0", macA)
		h.guest("vif6.0", macB)
		h.start(down(a), down(b))
		h.link(a)
		h.clk.advance(100 * time.Millisecond)
		h.link(b)
		h.wantBursts(macB, 1)
	})
}

func TestCloseStopsListenersAndDeferredBursts(t *testing.T) {
	h := newHarness(t, nil)
	vif, tap := ready(10, "vif5.0"), ready(20, "vnet3")
	h.guest("vif5.0", macA)
	h.start(down(vif), down(tap))
	h.link(vif)
	h.link(down(vif))
	h.link(vif) // deferred by the flap guard
	if h.ls.count() != 1 {
		t.Fatalf("%d guest-frame listeners, want the tap's", h.ls.count())
	}
	h.dm.Close()
	h.clk.advance(5 * time.Second)
	h.settle()
	h.wantBursts(macA, 1)
	deadline := time.Now().Add(10 * time.Second)
	for h.ls.count() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("guest-frame listener left open after Close")
		}
		time.Sleep(time.Millisecond)
	}
	h.link(down(vif))
	h.link(vif)
	h.wantBursts(macA, 1)
}

func TestListenerFailureDoesNotBlockOtherPorts(t *testing.T) {
	h := newHarness(t, nil)
	tap, vif := ready(20, "vnet3"), ready(10, "vif5.0")
	h.ls.failOn[20] = true
	h.guest("vif5.0", macA)
	h.start(down(tap), down(vif))
	h.link(tap)
	h.link(vif)
	h.wantBursts(macA, 1)
}

func TestDeletedPortsListenerClosed(t *testing.T) {
	h := newHarness(t, nil)
	tap := ready(20, "vnet3")
	h.guest("vnet3", macA)
	h.start(down(tap))
	h.link(tap)
	h.fire(tap, macA)
	h.del(tap)
	if h.metric("ports", "ready") != 0 || h.metric("ports", "waiting") != 0 {
		t.Errorf("ports gauge ready %v waiting %v after the only port went", h.metric("ports", "ready"), h.metric("ports", "waiting"))
	}
	deadline := time.Now().Add(10 * time.Second)
	for h.ls.count() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d listeners open after the port was deleted", h.ls.count())
		}
		time.Sleep(time.Millisecond)
	}
	// A new tap with the same index is a new port.
	h.clk.advance(5 * time.Second)
	h.link(tap)
	h.fire(tap, macA)
	h.wantBursts(macA, 2)
}

func toFloat(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	panic("not a counter or gauge")
}

// The second port of the same guest may report after the first burst has
// ended (netfront's carrier on the vif, then a frame through the -emu tap a
// second later): still the same arrival, so no second burst, deferred or
// not.
func TestSameMACSecondPortAfterBurstEnded(t *testing.T) {
	h := newHarness(t, emuByFrame)
	vif, emu := ready(10, "vif5.0"), ready(11, "vif5.0-emu")
	h.guest("vif5.0", macA)
	h.guest("vif5.0-emu", macA)
	h.start(down(vif), down(emu))
	h.link(vif)
	h.clk.advance(time.Second)
	h.link(emu)
	h.fire(emu, macA)
	h.clk.advance(5 * time.Second)
	h.wantBursts(macA, 1)

	// Once the port that announced has left, the other port's arrival is
	// a new one (after the holddown).
	h.link(down(vif))
	h.link(down(emu))
	h.link(emu)
	h.fire(emu, macA)
	h.wantBursts(macA, 2)
}

// emuByFrame announces xl's emulated-NIC taps on their first frame, as the
// defaults did before xen-start: the sibling rules do not depend on what
// marks the tap's arrival.
func emuByFrame(c *config.Config) {
	c.Ports = append([]config.PortRule{{Match: "vif*-emu", Trigger: config.TriggerGuestFrame}}, c.Ports...)
}

// fakeXen stands in for xenstart.Watcher: tests report domains' starts.
type fakeXen struct {
	mu      sync.Mutex
	follows map[int][]func(xenstart.Event)
	stopped int
}

func (x *fakeXen) follow(domid int, fn func(xenstart.Event)) func() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.follows[domid] = append(x.follows[domid], fn)
	return func() {
		x.mu.Lock()
		x.stopped++
		x.mu.Unlock()
	}
}

// start reports domid's start to every follower, as the watcher would
// (from its own goroutine; the fake calls them in line).
func (h *harness) xenStart(domid int, ev xenstart.Event) {
	h.t.Helper()
	h.xen.mu.Lock()
	fns := h.xen.follows[domid]
	delete(h.xen.follows, domid)
	h.xen.mu.Unlock()
	if len(fns) == 0 {
		h.t.Fatalf("nobody follows domain %d", domid)
	}
	ev.At = h.clk.now()
	for _, fn := range fns {
		fn(ev)
	}
	h.settle()
}
