//go:build linux

package wiretest

import (
	"bytes"
	"encoding/binary"
	"errors"
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

// Direction says which frames a Capture keeps.
type Direction int

const (
	// In keeps the frames arriving on the interface: on a switch port,
	// what the host behind it sent.
	In Direction = iota
	// Out keeps the frames the namespace transmits on the interface.
	Out
	// Both keeps every frame; Frame.Outgoing tells them apart.
	Both
)

// Frame is one frame a Capture received.
type Frame struct {
	// At is the kernel's receive time, so the test's own scheduling
	// delays do not count.
	At time.Time
	// Outgoing is set when the capture's namespace sent the frame.
	Outgoing bool
	// Data is the frame as the sender wrote it: the kernel moves a
	// received 802.1Q tag into PACKET_AUXDATA, and it is put back here.
	Data []byte
	// VLAN is the ID of the frame's 802.1Q tag, -1 when untagged.
	VLAN int
	// TagFromAux says the tag was read from PACKET_AUXDATA (the kernel
	// took it off), not left in the frame by the receive path.
	TagFromAux bool
}

// Src is the Ethernet source.
func (f Frame) Src() net.HardwareAddr { return net.HardwareAddr(f.Data[6:12]) }

// Untagged is Data without its 802.1Q tag.
func (f Frame) Untagged() []byte {
	if f.VLAN < 0 {
		return f.Data
	}
	return append(f.Data[:12:12], f.Data[16:]...)
}

// EtherType is the type of the payload, after any 802.1Q tag.
func (f Frame) EtherType() uint16 { return binary.BigEndian.Uint16(f.Untagged()[12:]) }

// Announcement decodes the frame with the production decoder.
func (f Frame) Announcement() (sniff.Announcement, bool) { return sniff.Decode(f.Data) }

// From is a predicate for frames whose Ethernet source is mac.
func From(mac net.HardwareAddr) func(Frame) bool {
	return func(f Frame) bool { return bytes.Equal(f.Src(), mac) }
}

// Capture records the frames crossing one interface of one namespace.
type Capture struct {
	where string
	dir   Direction
	index int
	pc    *packet.Conn
	rc    syscall.RawConn
	mu    sync.Mutex
	got   []Frame
	err   error
	done  chan struct{}
	once  sync.Once
}

// Start opens a packet socket on ifname inside ns; frames in direction dir
// that cross it after Start returns are recorded until Stop or test end.
func Start(t testing.TB, ns *netlab.NS, ifname string, dir Direction) *Capture {
	t.Helper()
	c := &Capture{where: ns.Name + "/" + ifname, dir: dir, done: make(chan struct{})}
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		c.index = ifi.Index
		if c.pc, err = packet.Listen(ifi, packet.Raw, unix.ETH_P_ALL, nil); err != nil {
			return err
		}
		if c.rc, err = c.pc.SyscallConn(); err != nil {
			c.pc.Close()
			return err
		}
		var serr error
		err = c.rc.Control(func(fd uintptr) {
			serr = errors.Join(
				unix.SetsockoptInt(int(fd), unix.SOL_PACKET, unix.PACKET_AUXDATA, 1),
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1),
				// Bursts of hundreds of frames must not overrun the queue
				// while the test is busy elsewhere.
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20),
			)
		})
		if err = errors.Join(err, serr); err != nil {
			c.pc.Close()
		}
		return err
	})
	if err != nil {
		t.Fatalf("capture on %s: %v", c.where, err)
	}
	go c.loop()
	t.Cleanup(func() { c.pc.Close(); <-c.done })
	return c
}

func (c *Capture) loop() {
	defer close(c.done)
	const tag = 4
	// The head is left free so a tag from auxdata can be put back.
	buf := make([]byte, tag+65536)
	oob := make([]byte, 512)
	for {
		var (
			n, oobn int
			from    unix.Sockaddr
			rerr    error
		)
		err := c.rc.Read(func(fd uintptr) bool {
			n, oobn, _, from, rerr = unix.Recvmsg(int(fd), buf[tag:], oob, 0)
			return rerr != unix.EAGAIN
		})
		if err != nil {
			return // closed, or the deadline set by Stop
		}
		if errors.Is(rerr, unix.EINTR) {
			continue
		}
		if rerr != nil {
			c.mu.Lock()
			c.err = rerr
			c.mu.Unlock()
			return
		}
		sll, ok := from.(*unix.SockaddrLinklayer)
		if !ok || sll.Ifindex != c.index || n < 14 {
			continue
		}
		out := sll.Pkttype == unix.PACKET_OUTGOING
		if (c.dir == In && out) || (c.dir == Out && !out) {
			continue
		}
		f := Frame{At: time.Now(), Outgoing: out, VLAN: -1}
		vlanValid, tci, tpid := false, uint16(0), uint16(0x8100)
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		for _, m := range msgs {
			switch {
			case m.Header.Level == unix.SOL_PACKET && m.Header.Type == unix.PACKET_AUXDATA &&
				len(m.Data) >= int(unsafe.Sizeof(unix.TpacketAuxdata{})):
				aux := (*unix.TpacketAuxdata)(unsafe.Pointer(&m.Data[0]))
				if aux.Status&unix.TP_STATUS_VLAN_VALID != 0 {
					vlanValid, tci = true, aux.Vlan_tci
					if aux.Status&unix.TP_STATUS_VLAN_TPID_VALID != 0 {
						tpid = aux.Vlan_tpid
					}
				}
			case m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS &&
				len(m.Data) >= int(unsafe.Sizeof(unix.Timespec{})):
				ts := (*unix.Timespec)(unsafe.Pointer(&m.Data[0]))
				f.At = time.Unix(ts.Unix())
			}
		}
		data := buf[tag : tag+n]
		if vlanValid {
			copy(buf, buf[tag:tag+12])
			binary.BigEndian.PutUint16(buf[12:], tpid)
			binary.BigEndian.PutUint16(buf[14:], tci)
			data = buf[:tag+n]
		}
		f.Data = append([]byte(nil), data...)
		f.TagFromAux = vlanValid
		// A tag left in the data (no offload on this path) counts too.
		if len(f.Data) >= 18 && binary.BigEndian.Uint16(f.Data[12:]) == 0x8100 {
			f.VLAN = int(binary.BigEndian.Uint16(f.Data[14:]) & 0xfff)
		}
		c.mu.Lock()
		c.got = append(c.got, f)
		c.mu.Unlock()
	}
}

// Frames returns the frames received so far, in order, that match pred
// (every frame when pred is nil).
func (c *Capture) Frames(pred func(Frame) bool) []Frame {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Frame
	for _, f := range c.got {
		if pred == nil || pred(f) {
			out = append(out, f)
		}
	}
	return out
}

// WaitFor waits until at least n frames match pred or timeout passes, and
// returns the matching frames.
func (c *Capture) WaitFor(timeout time.Duration, n int, pred func(Frame) bool) []Frame {
	end := time.Now().Add(timeout)
	for {
		fs := c.Frames(pred)
		if len(fs) >= n || time.Now().After(end) {
			return fs
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Stop lets frames already on their way arrive (200 ms), closes the socket
// and returns everything received; a read error fails the test.
func (c *Capture) Stop(t testing.TB) []Frame {
	t.Helper()
	c.once.Do(func() {
		c.pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		<-c.done
		c.pc.Close()
	})
	c.mu.Lock()
	err := c.err
	c.mu.Unlock()
	if err != nil {
		t.Fatalf("capture on %s: %v", c.where, err)
	}
	return c.Frames(nil)
}

// Name is "namespace/interface", for messages.
func (c *Capture) Name() string { return c.where }
