//go:build linux

package qemu_test

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/selfannounce/selfannounce/announce/sniff"
	"github.com/selfannounce/selfannounce/internal/netlab"
)

// frameRec is one frame seen on a port, with the kernel's receive time and
// its direction: a tap's ingress is what the guest (QEMU) sent, a veth's
// ingress what the peer namespace sent.
type frameRec struct {
	at   time.Time
	out  bool // PACKET_OUTGOING: the namespace sent it out of this port
	data []byte
}

func (f frameRec) announcement() (sniff.Announcement, bool) { return sniff.Decode(f.data) }

// capture records every frame crossing one interface of one namespace, from
// the moment startCapture returns, so a test can provoke traffic afterwards
// and judge it with kernel timestamps on one clock.
type capture struct {
	where string
	conn  *packet.Conn
	rc    syscall.RawConn
	mu    sync.Mutex
	got   []frameRec
	done  chan struct{}
}

func startCapture(t *testing.T, ns *netlab.NS, ifname string) *capture {
	t.Helper()
	c := &capture{where: ns.Name + "/" + ifname, done: make(chan struct{})}
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		c.conn, err = packet.Listen(ifi, packet.Raw, unix.ETH_P_ALL, nil)
		return err
	})
	if err != nil {
		t.Fatalf("capture on %s: %v", c.where, err)
	}
	rc, err := c.conn.SyscallConn()
	if err != nil {
		c.conn.Close()
		t.Fatalf("capture on %s: %v", c.where, err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	}); err == nil {
		err = serr
	}
	if err != nil {
		c.conn.Close()
		t.Fatalf("capture on %s: SO_TIMESTAMPNS: %v", c.where, err)
	}
	c.rc = rc
	go c.loop()
	t.Cleanup(func() {
		c.conn.Close()
		<-c.done
	})
	return c
}

func (c *capture) loop() {
	defer close(c.done)
	buf := make([]byte, 2048)
	oob := make([]byte, unix.CmsgSpace(int(unsafe.Sizeof(unix.Timespec{}))))
	for {
		var (
			n, oobn int
			from    unix.Sockaddr
			rerr    error
		)
		err := c.rc.Read(func(fd uintptr) bool {
			n, oobn, _, from, rerr = unix.Recvmsg(int(fd), buf, oob, 0)
			return rerr != unix.EAGAIN
		})
		if err == nil {
			err = rerr
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return // closed
		}
		sll, ok := from.(*unix.SockaddrLinklayer)
		if !ok {
			continue
		}
		at, ok := rxTime(oob[:oobn])
		if !ok {
			at = time.Now()
		}
		r := frameRec{at: at, out: sll.Pkttype == unix.PACKET_OUTGOING, data: append([]byte(nil), buf[:n]...)}
		c.mu.Lock()
		c.got = append(c.got, r)
		c.mu.Unlock()
	}
}

// frames returns what was seen so far in one direction.
func (c *capture) frames(out bool) []frameRec {
	c.mu.Lock()
	defer c.mu.Unlock()
	var fs []frameRec
	for _, f := range c.got {
		if f.out == out {
			fs = append(fs, f)
		}
	}
	return fs
}

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

// describe renders frames for failure messages, relative to t0.
func describe(fs []frameRec, t0 time.Time) string {
	s := ""
	for _, f := range fs {
		what := fmt.Sprintf("%d bytes ethertype %#04x", len(f.data), etherType(f.data))
		if a, ok := f.announcement(); ok {
			ip := "-"
			if a.IP.IsValid() {
				ip = a.IP.String()
			}
			what = fmt.Sprintf("%s %s %s", a.Kind, a.MAC, ip)
		}
		s += fmt.Sprintf("\n  %+8.1fms %s", ms(f.at.Sub(t0)), what)
	}
	return s
}

func etherType(b []byte) uint16 {
	if len(b) < 14 {
		return 0
	}
	return uint16(b[12])<<8 | uint16(b[13])
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
