package openflow

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultRunDir is where ovs-vswitchd creates <bridge>.mgmt sockets.
const DefaultRunDir = "/var/run/openvswitch"

// writeTimeout bounds a single write on the socket. Writes run on the
// session's own writer goroutine, never on a caller's: a switch that stops
// reading for this long loses the session.
const writeTimeout = 5 * time.Second

// queueLen is how many messages may wait for the writer. A switch that lets
// this many pile up is not reading; later messages fail at once with
// ErrBacklog rather than wait.
const queueLen = 256

// ErrBacklog is returned when the switch has stopped reading the session
// and its queue is full.
var ErrBacklog = errors.New("openflow: switch is not reading (send queue full)")

// maxOrphans caps errors kept for Flush; older ones are counted, not kept.
const maxOrphans = 64

// MgmtSocket returns the path of bridge's OpenFlow management socket;
// rundir "" means DefaultRunDir.
func MgmtSocket(rundir, bridge string) string {
	if rundir == "" {
		rundir = DefaultRunDir
	}
	return filepath.Join(rundir, bridge+".mgmt")
}

// ErrClosed is returned once the connection is gone.
var ErrClosed = errors.New("openflow: connection closed")

// Conn is an OpenFlow session with one bridge. Its methods are safe for
// concurrent use.
type Conn struct {
	nc      net.Conn
	version uint8
	xid     atomic.Uint32

	out chan []byte // whole messages for the writer goroutine

	mu       sync.Mutex
	barriers map[uint32]chan struct{}
	claims   map[uint32]*Error // xids whose errors a sync caller will collect
	claimed  map[uint32]bool
	orphans  []*Error
	dropped  int
	readErr  error

	done chan struct{}
	// closing asks the writer to put what is queued on the socket and
	// stop; drained is closed when it has.
	closeOnce sync.Once
	closing   chan struct{}
	drained   chan struct{}
}

// Dial connects to a management socket (see MgmtSocket), negotiates the
// highest version both sides speak (1.3 or 1.0) and confirms the session
// with a barrier round trip. ctx bounds the whole handshake.
func Dial(ctx context.Context, mgmtSocket string) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", mgmtSocket)
	if err != nil {
		return nil, fmt.Errorf("openflow: %w", err)
	}
	c, err := handshake(ctx, nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// handshake exchanges HELLOs on an established stream and starts the reader.
func handshake(ctx context.Context, nc net.Conn) (*Conn, error) {
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	} else {
		nc.SetDeadline(time.Now().Add(10 * time.Second))
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	c := &Conn{
		nc:       nc,
		barriers: map[uint32]chan struct{}{},
		claims:   map[uint32]*Error{},
		claimed:  map[uint32]bool{},
		out:      make(chan []byte, queueLen),
		done:     make(chan struct{}),
		closing:  make(chan struct{}),
		drained:  make(chan struct{}),
	}
	werr := make(chan error, 1)
	go func() {
		_, err := nc.Write(encodeHello(c.nextXid(), supported))
		werr <- err
	}()
	// Messages other than HELLO cannot precede it; anything else means the
	// peer is not an OpenFlow switch.
	msg, err := readMsg(nc)
	if err != nil {
		return nil, fmt.Errorf("openflow: waiting for HELLO: %w", err)
	}
	if err := <-werr; err != nil {
		return nil, fmt.Errorf("openflow: sending HELLO: %w", err)
	}
	if msg[1] == typeError {
		if e, perr := parseError(msg); perr == nil {
			return nil, e
		}
	}
	if msg[1] != typeHello {
		return nil, fmt.Errorf("openflow: expected HELLO, got message type %d", msg[1])
	}
	v, err := negotiate(msg, supported)
	if err != nil {
		nc.Write(encodeHelloFailed(min(msg[0], Version13), binary.BigEndian.Uint32(msg[4:]), err.Error()))
		return nil, err
	}
	c.version = v
	nc.SetDeadline(time.Time{})
	go c.writeLoop()
	go c.readLoop()
	if err := c.Flush(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Version is the negotiated protocol version (Version10 or Version13).
func (c *Conn) Version() uint8 { return c.version }

func (c *Conn) nextXid() uint32 {
	// xid 0 is left unused so a zero never matches a real request.
	for {
		if x := c.xid.Add(1); x != 0 {
			return x
		}
	}
}

func readMsg(r io.Reader) ([]byte, error) {
	var hb [headerLen]byte
	if _, err := io.ReadFull(r, hb[:]); err != nil {
		return nil, err
	}
	h, err := parseHeader(hb[:])
	if err != nil {
		return nil, err
	}
	msg := make([]byte, h.Length)
	copy(msg, hb[:])
	if _, err := io.ReadFull(r, msg[headerLen:]); err != nil {
		return nil, err
	}
	return msg, nil
}

// write queues one whole message for the writer goroutine and returns at
// once: no caller, the burst engine least of all, ever waits on the
// socket. A failed write ends the session, which callers see as ErrClosed.
func (c *Conn) write(b []byte) error {
	select {
	case <-c.done:
		return c.closedErr()
	default:
	}
	select {
	case c.out <- b:
		return nil
	default:
		return ErrBacklog
	}
}

// writeLoop puts queued messages on the socket in order.
func (c *Conn) writeLoop() {
	defer close(c.drained)
	for {
		select {
		case b := <-c.out:
			if !c.put(b) {
				return
			}
		case <-c.closing:
			for {
				select {
				case b := <-c.out:
					if !c.put(b) {
						return
					}
				default:
					return
				}
			}
		case <-c.done:
			return
		}
	}
}

// put writes one message; a failed write ends the session.
func (c *Conn) put(b []byte) bool {
	c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := c.nc.Write(b); err != nil {
		c.mu.Lock()
		if c.readErr == nil {
			c.readErr = fmt.Errorf("write: %w", err)
		}
		c.mu.Unlock()
		// Ends readLoop, which closes done.
		c.nc.Close()
		return false
	}
	return true
}

func (c *Conn) readLoop() {
	_, barrierReply := barrierTypes(c.version)
	var err error
	for {
		var msg []byte
		msg, err = readMsg(c.nc)
		if err != nil {
			break
		}
		xid := binary.BigEndian.Uint32(msg[4:])
		switch msg[1] {
		case typeEchoRequest:
			// Unanswered echoes make OVS drop the session.
			if werr := c.write(encodeEchoReply(msg)); werr != nil {
				err = werr
			}
		case typeError:
			e, perr := parseError(msg)
			if perr != nil {
				continue
			}
			c.mu.Lock()
			if c.claimed[xid] {
				c.claims[xid] = e
			} else {
				if len(c.orphans) == maxOrphans {
					c.orphans = c.orphans[1:]
					c.dropped++
				}
				c.orphans = append(c.orphans, e)
			}
			c.mu.Unlock()
		case barrierReply:
			c.mu.Lock()
			if ch, ok := c.barriers[xid]; ok {
				close(ch)
				delete(c.barriers, xid)
			}
			c.mu.Unlock()
		}
		// Port status and other asynchronous messages are of no interest.
		if err != nil {
			break
		}
	}
	c.mu.Lock()
	if c.readErr == nil {
		c.readErr = err
	}
	c.mu.Unlock()
	close(c.done)
}

func (c *Conn) closedErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.readErr == nil || errors.Is(c.readErr, net.ErrClosed) {
		return ErrClosed
	}
	return fmt.Errorf("%w: %v", ErrClosed, c.readErr)
}

// PacketOut asks the switch to process frame as if it had arrived on
// inPort, then apply a. It returns once the message is queued, without
// waiting on the socket (ErrBacklog if the switch has stopped reading); a
// rejection by the switch surfaces from the next Flush. Use PacketOutSync
// to learn the outcome of this very frame.
func (c *Conn) PacketOut(inPort uint32, a Action, frame []byte) error {
	b, err := encodePacketOut(c.version, c.nextXid(), inPort, a, frame)
	if err != nil {
		return err
	}
	return c.write(b)
}

// PacketOutSync is PacketOut followed by a barrier: it returns the switch's
// error for this frame, if any, once the switch has processed it.
func (c *Conn) PacketOutSync(ctx context.Context, inPort uint32, a Action, frame []byte) error {
	xid := c.nextXid()
	b, err := encodePacketOut(c.version, xid, inPort, a, frame)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.claimed[xid] = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.claimed, xid)
		delete(c.claims, xid)
		c.mu.Unlock()
	}()
	if err := c.write(b); err != nil {
		return err
	}
	if err := c.barrier(ctx); err != nil {
		return err
	}
	c.mu.Lock()
	e := c.claims[xid]
	c.mu.Unlock()
	if e != nil {
		return e
	}
	return nil
}

// Flush sends a BARRIER_REQUEST and waits for its reply, by which time the
// switch has processed every earlier message. It returns the errors the
// switch reported for earlier PacketOut calls since the last Flush.
func (c *Conn) Flush(ctx context.Context) error {
	if err := c.barrier(ctx); err != nil {
		return err
	}
	c.mu.Lock()
	errs := make([]error, 0, len(c.orphans)+1)
	for _, e := range c.orphans {
		errs = append(errs, e)
	}
	if c.dropped > 0 {
		errs = append(errs, fmt.Errorf("openflow: %d more switch errors not kept", c.dropped))
	}
	c.orphans, c.dropped = nil, 0
	c.mu.Unlock()
	return errors.Join(errs...)
}

func (c *Conn) barrier(ctx context.Context) error {
	xid := c.nextXid()
	ch := make(chan struct{})
	c.mu.Lock()
	c.barriers[xid] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.barriers, xid)
		c.mu.Unlock()
	}()
	if err := c.write(encodeBarrier(c.version, xid)); err != nil {
		return err
	}
	select {
	case <-ch:
		return nil
	case <-c.done:
		return c.closedErr()
	case <-ctx.Done():
		return fmt.Errorf("openflow: waiting for barrier reply: %w", ctx.Err())
	}
}

// Done is closed when the session ends (switch restart, Close).
func (c *Conn) Done() <-chan struct{} { return c.done }

// Close ends the session after writing what PacketOut already queued (each
// write bounded by writeTimeout): a one-shot closes right after its burst's
// last frame, and that frame must still leave.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() { close(c.closing) })
	select {
	case <-c.drained:
	case <-c.done:
	}
	err := c.nc.Close()
	<-c.done
	return err
}
