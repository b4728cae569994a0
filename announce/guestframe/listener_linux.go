//go:build linux

package guestframe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/mdlayher/packet"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Listener waits for frames from the guest behind one port.
type Listener struct {
	conn    *packet.Conn
	raw     syscall.RawConn
	ifindex int
	buf     [64]byte
	oob     []byte
	closed  atomic.Bool
}

// Listen starts watching the port with ifindex in the calling thread's
// network namespace. Frames that entered before Listen are not seen.
func Listen(ifindex int) (*Listener, error) {
	if ifindex <= 0 {
		return nil, fmt.Errorf("guestframe: invalid ifindex %d", ifindex)
	}
	filter, err := bpf.Assemble(program())
	if err != nil {
		return nil, fmt.Errorf("guestframe: assemble filter: %w", err)
	}
	// The filter is attached before bind, so nothing unfiltered is queued.
	conn, err := packet.Listen(&net.Interface{Index: ifindex}, packet.Raw, unix.ETH_P_ALL, &packet.Config{Filter: filter})
	if err != nil {
		return nil, fmt.Errorf("guestframe: listen on ifindex %d: %w", ifindex, err)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("guestframe: %w", err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	}); err == nil {
		err = serr
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("guestframe: enable receive timestamps: %w", err)
	}
	return &Listener{
		conn:    conn,
		raw:     raw,
		ifindex: ifindex,
		oob:     make([]byte, unix.CmsgSpace(int(unsafe.Sizeof(unix.Timespec{})))),
	}, nil
}

// Wait blocks until the guest sends a frame, and returns the frame's source
// MAC and the time the kernel received it. It returns ctx's error when ctx
// ends first, and net.ErrClosed after Close. Each call returns the next such
// frame. Wait must not be called from two goroutines at once.
func (l *Listener) Wait(ctx context.Context) (src net.HardwareAddr, at time.Time, err error) {
	if err := ctx.Err(); err != nil {
		return nil, time.Time{}, err
	}
	// A deadline left by an earlier, cancelled Wait must not end this one.
	if err := l.conn.SetReadDeadline(time.Time{}); err != nil {
		return nil, time.Time{}, l.wrap(err)
	}
	stop := context.AfterFunc(ctx, func() { l.conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()

	for {
		var n, oobn int
		var rerr error
		err := l.raw.Read(func(fd uintptr) bool {
			n, oobn, _, _, rerr = unix.Recvmsg(int(fd), l.buf[:], l.oob, 0)
			return rerr != unix.EAGAIN
		})
		if err == nil {
			err = rerr
		}
		// The kernel reports ENETDOWN once when the socket is bound to an
		// admin-down port (a tap or vif is created down) or when the port
		// goes down, and resumes delivery when it comes up: not an end.
		if errors.Is(err, unix.ENETDOWN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, time.Time{}, ctx.Err()
			}
			return nil, time.Time{}, l.wrap(err)
		}
		if n < snapLen {
			continue
		}
		at, ok := rxTime(l.oob[:oobn])
		if !ok {
			at = time.Now()
		}
		return net.HardwareAddr(append([]byte(nil), l.buf[6:12]...)), at, nil
	}
}

// Close stops the Listener; a blocked Wait returns net.ErrClosed.
func (l *Listener) Close() error {
	l.closed.Store(true)
	return l.conn.Close()
}

func (l *Listener) wrap(err error) error {
	// The raw *os.File underneath reports closing with an unexported error.
	if l.closed.Load() || errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("guestframe: ifindex %d: %w", l.ifindex, net.ErrClosed)
	}
	return fmt.Errorf("guestframe: ifindex %d: %w", l.ifindex, err)
}

// rxTime extracts the SCM_TIMESTAMPNS the kernel attaches on receive.
func rxTime(oob []byte) (time.Time, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return time.Time{}, false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS &&
			len(m.Data) >= int(unsafe.Sizeof(unix.Timespec{})) {
			var ts unix.Timespec
			copy(unsafe.Slice((*byte)(unsafe.Pointer(&ts)), unsafe.Sizeof(ts)), m.Data)
			return time.Unix(ts.Unix()), true
		}
	}
	return time.Time{}, false
}
