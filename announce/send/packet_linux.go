//go:build linux

package send

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

// ErrNoRawCapability is returned when the process lacks CAP_NET_RAW.
var ErrNoRawCapability = errors.New("sending raw frames needs CAP_NET_RAW (run as root or grant the capability)")

// packetSender writes on AF_PACKET sockets, one per ifindex, opened on first
// use and kept: announcements come in bursts on the same few uplinks.
type packetSender struct {
	mu     sync.Mutex
	conns  map[int]*packet.Conn
	closed bool
}

// NewPacketSender returns a Sender that writes raw frames on AF_PACKET
// sockets. The sockets are bound with protocol 0, so they never receive
// traffic and cost nothing while idle. Sockets belong to the network
// namespace of the thread that first sends on each ifindex.
func NewPacketSender() Sender {
	return &packetSender{conns: map[int]*packet.Conn{}}
}

func listen(ifindex int) (*packet.Conn, error) {
	// Only Index is used: binding by index avoids a name lookup that could
	// race a rename.
	c, err := packet.Listen(&net.Interface{Index: ifindex}, packet.Raw, 0, nil)
	if err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			return nil, ErrNoRawCapability
		}
		if errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENXIO) {
			return nil, fmt.Errorf("no network device with ifindex %d", ifindex)
		}
		return nil, fmt.Errorf("opening packet socket on ifindex %d: %v", ifindex, err)
	}
	return c, nil
}

// CheckRaw opens and closes a packet socket without binding or sending, so
// a missing CAP_NET_RAW is reported before any frame leaves.
func CheckRaw() error {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			return ErrNoRawCapability
		}
		return fmt.Errorf("opening packet socket: %v", os.NewSyscallError("socket", err))
	}
	return unix.Close(fd)
}

func (s *packetSender) Send(ifindex int, frame []byte) error {
	if ifindex <= 0 {
		return fmt.Errorf("invalid ifindex %d", ifindex)
	}
	if len(frame) < minFrame {
		return fmt.Errorf("frame of %d bytes is shorter than an Ethernet header", len(frame))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("sender is closed")
	}
	c, ok := s.conns[ifindex]
	if !ok {
		var err error
		if c, err = listen(ifindex); err != nil {
			return err
		}
		s.conns[ifindex] = c
	}
	// For SOCK_RAW the frame carries its own header; the address only fills
	// sockaddr_ll.
	if _, err := c.WriteTo(frame, &packet.Addr{HardwareAddr: net.HardwareAddr(frame[:6])}); err != nil {
		// The device may be gone (a guest port unplugged mid-burst); drop
		// the socket so a later send starts afresh.
		c.Close()
		delete(s.conns, ifindex)
		if errors.Is(err, unix.ENXIO) || errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("sending %d-byte frame on ifindex %d: device is gone", len(frame), ifindex)
		}
		if errors.Is(err, unix.ENETDOWN) {
			return fmt.Errorf("sending %d-byte frame on ifindex %d: device is down", len(frame), ifindex)
		}
		return fmt.Errorf("sending %d-byte frame on ifindex %d: %v", len(frame), ifindex, err)
	}
	return nil
}

func (s *packetSender) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	var first error
	for idx, c := range s.conns {
		if err := c.Close(); err != nil && first == nil {
			first = err
		}
		delete(s.conns, idx)
	}
	return first
}
