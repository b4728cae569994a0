//go:build linux

package netwatch

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// DefaultReadBuffer is the receive buffer asked for by default. A host
// starting or migrating many guests at once sends bursts of link messages;
// overruns are still handled, but each costs a full re-dump.
const DefaultReadBuffer = 4 << 20

// recvBufSize exceeds the largest datagram the kernel builds for a netlink
// reader (dump chunks are capped near 32 KiB), so a full read means
// truncation.
const recvBufSize = 64 << 10

// Option configures a Watcher.
type Option func(*options)

type options struct {
	readBuffer int
}

// WithReadBuffer sets the socket receive buffer in bytes (SO_RCVBUFFORCE,
// falling back to SO_RCVBUF; the kernel doubles it and enforces a minimum of
// a few KiB). Tests use a tiny value to force real overruns.
func WithReadBuffer(bytes int) Option {
	return func(o *options) { o.readBuffer = bytes }
}

// Watcher follows links in the network namespace it was created in.
type Watcher struct {
	conn *netlink.Conn
	raw  syscall.RawConn
	pid  uint32
	buf  []byte
	msg  linkMsg

	links       table
	running     atomic.Bool
	overruns    atomic.Uint64
	interrupted atomic.Uint64
}

// New opens an rtnetlink socket in the calling thread's network namespace.
func New(opts ...Option) (*Watcher, error) {
	o := options{readBuffer: DefaultReadBuffer}
	for _, f := range opts {
		f(&o)
	}
	if o.readBuffer <= 0 {
		return nil, fmt.Errorf("netwatch: read buffer must be positive, got %d", o.readBuffer)
	}
	conn, err := netlink.Dial(unix.NETLINK_ROUTE, nil)
	if err != nil {
		return nil, fmt.Errorf("netwatch: dial rtnetlink: %w", err)
	}
	if err := conn.SetReadBuffer(o.readBuffer); err != nil {
		conn.Close()
		return nil, fmt.Errorf("netwatch: set receive buffer: %w", err)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("netwatch: %w", err)
	}
	return &Watcher{conn: conn, raw: raw, pid: conn.PID(), buf: make([]byte, recvBufSize)}, nil
}

// Close releases the socket; a running Run returns an error.
func (w *Watcher) Close() error { return w.conn.Close() }

// Overruns counts the times the kernel dropped messages for lack of buffer
// space and the Watcher re-read the whole state to recover.
func (w *Watcher) Overruns() uint64 { return w.overruns.Load() }

// Interrupted counts the dumps the kernel flagged as interrupted by a
// concurrent change (NLM_F_DUMP_INTR); each was redone, never trusted.
func (w *Watcher) Interrupted() uint64 { return w.interrupted.Load() }

// Run subscribes to link changes, then reads the current state and calls
// initial once with every link, then fn for each change until ctx ends. After
// an overrun it re-reads the state and reports the difference, so every
// change that matters is reported exactly once even when messages were lost.
// Callbacks run on Run's goroutine; while they block, nothing is read.
func (w *Watcher) Run(ctx context.Context, initial func([]Link), fn func(Event)) error {
	if !w.running.CompareAndSwap(false, true) {
		return errors.New("netwatch: Run called twice")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { w.conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()

	err := w.run(initial, fn)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

func (w *Watcher) run(initial func([]Link), fn func(Event)) error {
	// Subscribing before the dump means no change can fall between them.
	if err := w.conn.JoinGroup(unix.RTNLGRP_LINK); err != nil {
		return fmt.Errorf("netwatch: join RTNLGRP_LINK: %w", err)
	}
	t, err := w.resync()
	if err != nil {
		return err
	}
	w.links = t
	initial(t.snapshot())

	for {
		n, err := w.recv()
		if errors.Is(err, unix.ENOBUFS) {
			w.overruns.Add(1)
			t, err := w.resync()
			if err != nil {
				return err
			}
			evs := diff(w.links, t)
			w.links = t
			for _, ev := range evs {
				fn(ev)
			}
			continue
		}
		if err != nil {
			return err
		}
		err = eachMsg(w.buf[:n], func(h nlHeader, payload []byte) error {
			if h.pid == w.pid || (h.typ != rtmNewLink && h.typ != rtmDelLink) {
				// Leftovers of our own dumps, or nothing about links.
				return nil
			}
			if err := w.msg.decode(h.typ, payload); err != nil {
				return err
			}
			if ev, ok := w.links.apply(&w.msg); ok {
				fn(ev)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
}

// resync builds the full state from a dump of both families. Messages queued
// before the first dump reply are older than anything the dump says and are
// dropped; those interleaved after it are newer than the part of the dump
// already read and are applied in order. An overrun during the dump, or a
// dump the kernel flags as interrupted, starts it all over.
func (w *Watcher) resync() (table, error) {
	for {
		// Stale messages, and the rest of a dump abandoned by an earlier
		// attempt, would otherwise stand between the request and its reply.
		if err := w.drain(); err != nil {
			return nil, err
		}
		t := table{}
		intr := w.interrupted.Load()
		ok, err := w.dump(t, 0, false)
		if err == nil && ok {
			ok, err = w.dump(t, afBridge, true)
		}
		if err != nil {
			return nil, err
		}
		if ok {
			return t, nil
		}
		if w.interrupted.Load() == intr {
			w.overruns.Add(1)
		}
	}
}

// dump requests RTM_GETLINK for family and applies replies and interleaved
// notifications to t. It returns false if the result cannot be trusted
// because messages were lost meanwhile.
func (w *Watcher) dump(t table, family uint8, live bool) (bool, error) {
	req := make([]byte, sizeofIfinfomsg, sizeofIfinfomsg+8)
	req[0] = family
	if family == 0 {
		// Statistics are most of each message and useless here.
		ae := netlink.NewAttributeEncoder()
		ae.Uint32(iflaExtMask, rtextFilterSkipStats)
		attrs, err := ae.Encode()
		if err != nil {
			return false, err
		}
		req = append(req, attrs...)
	}
	sent, err := w.conn.Send(netlink.Message{
		Header: netlink.Header{Type: rtmGetLink, Flags: netlink.Request | netlink.Dump},
		Data:   req,
	})
	if err != nil {
		return false, fmt.Errorf("netwatch: request link dump: %w", err)
	}
	d := dumpState{seq: sent.Header.Sequence, family: family, live: live, trusted: true}
	for {
		n, err := w.recv()
		if errors.Is(err, unix.ENOBUFS) {
			d.trusted = false
			continue
		}
		if err != nil {
			return false, err
		}
		done, err := w.dumpDatagram(&d, t, w.buf[:n])
		if err != nil {
			return false, err
		}
		if done {
			if d.interrupted {
				w.interrupted.Add(1)
			}
			return d.trusted, nil
		}
	}
}

// dumpState is one link dump in progress.
type dumpState struct {
	seq    uint32
	family uint8
	// live: notifications are applied (the first reply has been seen, or
	// this is the second dump of a resync).
	live bool
	// trusted stays true while nothing was lost or interrupted.
	trusted bool
	// interrupted: the kernel flagged a reply NLM_F_DUMP_INTR.
	interrupted bool
}

// nlmFDumpIntr is NLM_F_DUMP_INTR: the kernel's table changed while it
// was being dumped, so the dump may have skipped entries. On kernels before
// 6.7 a link deleted mid-dump makes the next link vanish from it; trusting
// such a dump would invent a deletion.
const nlmFDumpIntr = 0x10

// dumpDatagram applies one datagram read during a dump to t and reports
// whether the dump's NLMSG_DONE (or error) was in it.
func (w *Watcher) dumpDatagram(d *dumpState, t table, b []byte) (bool, error) {
	done := false
	err := eachMsg(b, func(h nlHeader, payload []byte) error {
		mine := h.pid == w.pid
		if mine && h.seq != d.seq {
			return nil // from an abandoned dump
		}
		if mine {
			d.live = true
			if h.flags&nlmFDumpIntr != 0 {
				d.trusted, d.interrupted = false, true
			}
		}
		switch h.typ {
		case unix.NLMSG_DONE, unix.NLMSG_ERROR:
			if !mine {
				return nil
			}
			done = true
			errno := nlErrno(payload)
			switch errno {
			case 0:
				return nil
			case unix.EBUSY, unix.ENOBUFS, unix.EINTR:
				// Another dump still ran, or the kernel could not
				// queue ours: try again.
				d.trusted = false
				return nil
			}
			return fmt.Errorf("netwatch: link dump (family %d): %w", d.family, errno)
		case rtmNewLink, rtmDelLink:
			if !d.live {
				return nil
			}
			if err := w.msg.decode(h.typ, payload); err != nil {
				return err
			}
			t.apply(&w.msg)
		}
		return nil
	})
	return done, err
}

// recv reads one datagram into w.buf, waiting through the runtime poller so
// an idle Watcher costs nothing.
func (w *Watcher) recv() (int, error) {
	var n int
	var rerr error
	err := w.raw.Read(func(fd uintptr) bool {
		n, rerr = unix.Read(int(fd), w.buf)
		return rerr != unix.EAGAIN
	})
	if err != nil {
		return 0, fmt.Errorf("netwatch: receive: %w", err)
	}
	if rerr != nil {
		return 0, fmt.Errorf("netwatch: receive: %w", rerr)
	}
	if n >= len(w.buf) {
		// Cannot happen with current kernels; if it does, the state is
		// unknown, which is what an overrun means.
		return 0, fmt.Errorf("netwatch: receive: datagram truncated: %w", unix.ENOBUFS)
	}
	return n, nil
}

// drain discards everything already queued on the socket.
func (w *Watcher) drain() error {
	var rerr error
	err := w.raw.Control(func(fd uintptr) {
		for {
			_, rerr = unix.Read(int(fd), w.buf)
			switch rerr {
			case nil, unix.ENOBUFS, unix.EINTR:
				continue
			case unix.EAGAIN:
				rerr = nil
			}
			return
		}
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("netwatch: drain: %w", err)
	}
	return nil
}

type nlHeader struct {
	typ   uint16
	flags uint16
	seq   uint32
	pid   uint32
}

// eachMsg walks the netlink messages in one datagram without copying them.
func eachMsg(b []byte, fn func(nlHeader, []byte) error) error {
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return fmt.Errorf("netwatch: malformed netlink message length %d", l)
		}
		h := nlHeader{
			typ:   binary.NativeEndian.Uint16(b[4:6]),
			flags: binary.NativeEndian.Uint16(b[6:8]),
			seq:   binary.NativeEndian.Uint32(b[8:12]),
			pid:   binary.NativeEndian.Uint32(b[12:16]),
		}
		if err := fn(h, b[unix.NLMSG_HDRLEN:l]); err != nil {
			return err
		}
		l = (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
		if l > len(b) {
			break
		}
		b = b[l:]
	}
	return nil
}

// nlErrno extracts the (negated) error code NLMSG_DONE and NLMSG_ERROR carry.
func nlErrno(payload []byte) syscall.Errno {
	if len(payload) < 4 {
		return 0
	}
	e := int32(binary.NativeEndian.Uint32(payload[:4]))
	if e < 0 {
		e = -e
	}
	return syscall.Errno(e)
}
