package plan

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/burst"
	"github.com/selfannounce/selfannounce/announce/frame"
	"github.com/selfannounce/selfannounce/announce/openflow"
	"github.com/selfannounce/selfannounce/announce/ovs"
)

// OVSPorts gives the current state of an OVS interface: the daemon's OVSDB
// monitor, or a snapshot for the one-shot.
type OVSPorts interface {
	Lookup(name string) (ovs.Port, bool)
}

// StaticPorts is a fixed snapshot of OVS ports.
type StaticPorts []ovs.Port

// Lookup finds the interface called name in the snapshot.
func (s StaticPorts) Lookup(name string) (ovs.Port, bool) { return ovs.Find(s, name) }

// OVS plans announcements on Open vSwitch hosts: each frame is an OpenFlow
// packet-out with in_port = the VIF's ofport, so OVS handles it as if the
// guest had sent it (VLAN tag, bond member, MAC learning on the VIF). No
// repair is needed: the packet-out itself teaches OVS the MAC.
type OVS struct {
	Ports  OVSPorts
	Pool   *OFPool
	RunDir string // where the bridges' .mgmt sockets are; "" is OVS's default
	Action openflow.Action
}

// Plan builds one round for the guest behind the OVS interface port.
func (o *OVS) Plan(port string, g announce.Guest) (*Plan, error) {
	p, ok := o.Ports.Lookup(port)
	if !ok {
		return nil, fmt.Errorf("interface %q is not an Open vSwitch port", port)
	}
	if p.OFPort <= 0 {
		return nil, fmt.Errorf("interface %q on Open vSwitch bridge %s has no OpenFlow port number yet (ofport %d)", port, p.Bridge, p.OFPort)
	}
	native, nativeOK, tagged := portVLANs(p)
	pl := &Plan{Port: port, Backend: "ovs", Bridge: p.Bridge, VLAN: uint16(p.Tag), Guest: g}
	w := &ofWriter{ports: o.Ports, pool: o.Pool, rundir: o.RunDir, name: port, action: o.Action, ofport: p.OFPort}
	via := fmt.Sprintf("ofport %d actions=%s", p.OFPort, o.Action)
	if nativeOK {
		// Untagged, as the guest itself sends: OVS puts it on the port's
		// native VLAN and adds the tag where the output needs one.
		fs, err := frame.Round(g, 0)
		if err != nil {
			return nil, err
		}
		pl.Outputs = append(pl.Outputs, Output{Via: via, VLAN: native})
		for _, f := range fs {
			pl.Packets = append(pl.Packets, burst.Packet{W: w, Kind: f.Kind.String(), Data: f.Data})
		}
	}
	// The VLANs the port carries tagged: the guest's MAC lives there too
	// (its VLAN subinterfaces), so each gets a RARP tagged as the guest
	// would tag it. Only the MAC: an address cannot be tied to a VLAN, and
	// a GARP on the wrong one would claim it where it is not the guest's.
	for _, v := range tagged {
		fs, err := frame.Round(announce.Guest{MAC: g.MAC, Source: g.Source}, v)
		if err != nil {
			return nil, err
		}
		pl.Outputs = append(pl.Outputs, Output{Via: via + " (tagged)", VLAN: v})
		for _, f := range fs {
			pl.Packets = append(pl.Packets, burst.Packet{W: w, Kind: f.Kind.String(), Data: f.Data})
		}
	}
	if len(pl.Packets) == 0 {
		return nil, fmt.Errorf("interface %q on Open vSwitch bridge %s carries no VLAN to announce on (vlan_mode %q, tag %d, trunks %v)", port, p.Bridge, p.VLANMode, p.Tag, p.Trunks)
	}
	// Connect now, while the guest is still being identified elsewhere, so
	// the first frame does not wait for the OpenFlow handshake.
	o.Pool.Warm(openflow.MgmtSocket(o.RunDir, p.Bridge))
	return pl, nil
}

// ofWriter sends one frame as a packet-out from the VIF's current ofport.
type ofWriter struct {
	ports  OVSPorts
	pool   *OFPool
	rundir string
	name   string
	action openflow.Action
	ofport int // at plan time, for Describe only
}

// ErrNoSession is returned for a frame when no OpenFlow session with the
// bridge is up: the pool redials in the background, and the frame is
// failed at once rather than wait, since the burst engine's goroutine
// serves every guest, Linux-bridge ones included.
var ErrNoSession = errors.New("no OpenFlow session")

func (w *ofWriter) WriteFrame(b []byte) error {
	// OVS does not check in_port: a stale number would announce the guest
	// from whatever port now has it, so it is read fresh for every frame.
	p, ok := w.ports.Lookup(w.name)
	if !ok {
		return fmt.Errorf("OVS interface %s is gone", w.name)
	}
	if p.OFPort <= 0 {
		return fmt.Errorf("OVS interface %s has no ofport (%d)", w.name, p.OFPort)
	}
	sock := openflow.MgmtSocket(w.rundir, p.Bridge)
	c, err := w.pool.Live(sock)
	if err != nil {
		return err
	}
	if err := c.PacketOut(uint32(p.OFPort), w.action, b); err != nil {
		if isDone(c) {
			// A restarted ovs-vswitchd closed the session: redial in the
			// background for the next frame.
			w.pool.drop(sock, c)
			w.pool.Warm(sock)
		}
		return fmt.Errorf("packet-out on %s: %w", sock, err)
	}
	w.pool.wrote(sock, c)
	return nil
}

// Pending implements burst.Pender: while the session with the VIF's bridge
// is being dialled, the engine holds this burst back (and only this one)
// instead of failing its first frames.
func (w *ofWriter) Pending() <-chan struct{} {
	p, ok := w.ports.Lookup(w.name)
	if !ok {
		return nil
	}
	return w.pool.Pending(openflow.MgmtSocket(w.rundir, p.Bridge))
}

func (w *ofWriter) Describe() string {
	return fmt.Sprintf("ofport %d (%s)", w.ofport, w.name)
}

// OFPool shares one OpenFlow session per bridge among every burst, dials on
// first use, and redials in the background when ovs-vswitchd drops it.
type OFPool struct {
	log *zap.Logger
	// DialTimeout bounds one connection attempt.
	DialTimeout time.Duration

	mu     sync.Mutex
	conns  map[string]*ofEntry
	closed bool
	stop   chan struct{} // closed by Close, to end redial waits
	wg     sync.WaitGroup
}

type ofEntry struct {
	conn     *openflow.Conn
	dialing  chan struct{} // non-nil while a dial runs; closed when it ends
	err      error         // of the last dial
	flushing bool
}

// NewOFPool returns an empty pool; log (may be nil) gets the switch's
// rejections of earlier packet-outs and session losses.
func NewOFPool(log *zap.Logger) *OFPool {
	if log == nil {
		log = zap.NewNop()
	}
	return &OFPool{log: log, DialTimeout: 2 * time.Second, conns: map[string]*ofEntry{}, stop: make(chan struct{})}
}

func isDone(c *openflow.Conn) bool {
	select {
	case <-c.Done():
		return true
	default:
		return false
	}
}

// Get returns a live session with the bridge whose management socket is
// sock, dialling (or joining a dial in flight) if needed.
func (p *OFPool) Get(ctx context.Context, sock string) (*openflow.Conn, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, openflow.ErrClosed
	}
	e := p.entry(sock)
	if e.conn != nil && !isDone(e.conn) {
		c := e.conn
		p.mu.Unlock()
		return c, nil
	}
	ch := p.dialLocked(sock, e)
	p.mu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
		return nil, fmt.Errorf("connecting to %s: %w", sock, ctx.Err())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if e.conn != nil && !isDone(e.conn) {
		return e.conn, nil
	}
	if e.err != nil {
		return nil, e.err
	}
	return nil, openflow.ErrClosed
}

// Live returns the live session with sock at once, or ErrNoSession while
// there is none, after starting a dial in the background. It never waits.
func (p *OFPool) Live(sock string) (*openflow.Conn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, openflow.ErrClosed
	}
	e := p.entry(sock)
	if e.conn != nil && !isDone(e.conn) {
		return e.conn, nil
	}
	p.dialLocked(sock, e)
	if e.err != nil {
		return nil, fmt.Errorf("%w with %s (connecting; last attempt: %v)", ErrNoSession, sock, e.err)
	}
	return nil, fmt.Errorf("%w with %s (connecting)", ErrNoSession, sock)
}

// Pending returns a channel closed when the dial with sock in flight ends,
// starting one if there is no session; nil when a session is up.
func (p *OFPool) Pending(sock string) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	e := p.entry(sock)
	if e.conn != nil && !isDone(e.conn) {
		return nil
	}
	return p.dialLocked(sock, e)
}

// Warm starts connecting to sock in the background if no session exists.
func (p *OFPool) Warm(sock string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	e := p.entry(sock)
	if e.conn == nil || isDone(e.conn) {
		p.dialLocked(sock, e)
	}
}

func (p *OFPool) entry(sock string) *ofEntry {
	e := p.conns[sock]
	if e == nil {
		e = &ofEntry{}
		p.conns[sock] = e
	}
	return e
}

// dialLocked starts a dial unless one is running, and returns its channel.
func (p *OFPool) dialLocked(sock string, e *ofEntry) <-chan struct{} {
	if e.dialing != nil {
		return e.dialing
	}
	ch := make(chan struct{})
	e.dialing = ch
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), p.DialTimeout)
		c, err := openflow.Dial(ctx, sock)
		cancel()
		p.mu.Lock()
		e.dialing = nil
		e.err = err
		if err == nil {
			if p.closed {
				c.Close()
			} else {
				e.conn = c
				p.wg.Add(1)
				go p.watch(sock, e, c)
			}
		}
		p.mu.Unlock()
		close(ch)
	}()
	return ch
}

// watch redials after ovs-vswitchd ends the session (a restart), with
// backoff, so the next arrival finds a session ready.
func (p *OFPool) watch(sock string, e *ofEntry, c *openflow.Conn) {
	defer p.wg.Done()
	<-c.Done()
	p.mu.Lock()
	if p.closed || e.conn != c {
		p.mu.Unlock()
		return
	}
	e.conn = nil
	p.mu.Unlock()
	p.log.Info("OpenFlow session ended, reconnecting", zap.String("socket", sock))
	delay := 100 * time.Millisecond
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
		select {
		case <-time.After(delay):
		case <-p.stop:
			return
		}
		delay = min(2*delay, 5*time.Second)
		p.mu.Lock()
		if p.closed || e.conn != nil {
			p.mu.Unlock()
			return
		}
		ch := p.dialLocked(sock, e)
		p.mu.Unlock()
		<-ch
		p.mu.Lock()
		ok := e.conn != nil
		p.mu.Unlock()
		if ok {
			return
		}
	}
	// The bridge may be gone for good; the next frame dials again.
}

func (p *OFPool) drop(sock string, c *openflow.Conn) {
	p.mu.Lock()
	if e := p.conns[sock]; e != nil && e.conn == c {
		e.conn = nil
	}
	p.mu.Unlock()
	c.Close()
}

// wrote schedules a barrier shortly after a packet-out so the switch's
// rejections (bad port, bad table) are logged, without making the burst
// engine wait for a round trip.
func (p *OFPool) wrote(sock string, c *openflow.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.conns[sock]
	if e == nil || e.flushing || p.closed {
		return
	}
	e.flushing = true
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		time.Sleep(20 * time.Millisecond)
		p.mu.Lock()
		e.flushing = false
		p.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := c.Flush(ctx)
		cancel()
		if err != nil && !errors.Is(err, openflow.ErrClosed) {
			p.log.Warn("Open vSwitch rejected a packet-out", zap.String("socket", sock), zap.Error(err))
		}
	}()
}

// Close ends every session and waits for the pool's goroutines.
func (p *OFPool) Close() {
	p.mu.Lock()
	if !p.closed {
		close(p.stop)
	}
	p.closed = true
	var cs []*openflow.Conn
	for _, e := range p.conns {
		if e.conn != nil {
			cs = append(cs, e.conn)
			e.conn = nil
		}
	}
	p.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
	p.wg.Wait()
}

// portVLANs says how OVS treats frames a port receives, as its bundle
// input check does (ofproto-dpif-xlate's input_vid_is_valid): whether an
// untagged frame is accepted (nativeOK) and on which VLAN (native, 0 for
// none), and which VLANs the port also carries tagged that a listed trunks
// column names. An untagged frame on a trunk whose trunks exclude VLAN 0 is
// dropped by OVS without an error to the packet-out, so it is not sent.
func portVLANs(p ovs.Port) (native uint16, nativeOK bool, tagged []uint16) {
	mode := p.VLANMode
	if mode == "" {
		mode = "trunk"
		if p.Tag != 0 {
			mode = "access"
		}
	}
	switch mode {
	case "trunk":
		nativeOK = len(p.Trunks) == 0
		for _, v := range p.Trunks {
			if v == 0 {
				nativeOK = true
			} else if v > 0 && v < 4095 {
				tagged = append(tagged, uint16(v))
			}
		}
		return 0, nativeOK, tagged
	case "native-tagged", "native-untagged":
		for _, v := range p.Trunks {
			if v > 0 && v < 4095 && v != p.Tag {
				tagged = append(tagged, uint16(v))
			}
		}
		return uint16(p.Tag), true, tagged
	}
	// access, dot1q-tunnel, and modes this code does not know: untagged,
	// onto the port's tag.
	return uint16(p.Tag), true, nil
}
