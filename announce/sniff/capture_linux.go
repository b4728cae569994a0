//go:build linux

package sniff

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

const (
	tagLen = 4
	// auxdataLen is sizeof(struct tpacket_auxdata).
	auxdataLen = int(unsafe.Sizeof(unix.TpacketAuxdata{}))
)

// Sniffer holds capture sockets opened by Open.
type Sniffer struct {
	socks []*sock
	mu    sync.Mutex // serialises fn across sockets
}

type sock struct {
	pc *packet.Conn
	rc syscall.RawConn
	// name is the bound interface, or "" when bound to all of them.
	name string
}

// Run captures announcements on the named interfaces, or on every interface
// of the current network namespace when ifaces is empty, and calls fn for
// each until ctx ends. fn is never called concurrently. Like tcpdump -i any,
// the all-interfaces form reports a frame once per interface it crosses (a
// bridge and its ports), which shows the path it took; interfaces without
// an Ethernet header (loopback, tunnels) are ignored.
func Run(ctx context.Context, ifaces []string, fn func(Event)) error {
	s, err := Open(ifaces)
	if err != nil {
		return err
	}
	return s.Serve(ctx, fn)
}

// Open opens the capture sockets of Run without reading from them, so a
// caller knows capture has begun before it provokes announcements. The
// sockets belong to the calling thread's network namespace. With no
// interfaces named, one socket sees every interface, including ones created
// later.
func Open(ifaces []string) (*Sniffer, error) {
	s := &Sniffer{}
	if len(ifaces) == 0 {
		// Index 0 binds a packet socket to every interface.
		sk, err := listen(&net.Interface{Index: 0}, "")
		if err != nil {
			return nil, err
		}
		s.socks = append(s.socks, sk)
		return s, nil
	}
	for _, name := range ifaces {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("sniff: interface %q: %v", name, err)
		}
		sk, err := listen(ifi, name)
		if err != nil {
			s.Close()
			return nil, err
		}
		s.socks = append(s.socks, sk)
	}
	return s, nil
}

func listen(ifi *net.Interface, name string) (*sock, error) {
	what := name
	if what == "" {
		what = "all interfaces"
	}
	// The filter goes on before bind, so nothing unfiltered is queued.
	pc, err := packet.Listen(ifi, packet.Raw, unix.ETH_P_ALL, &packet.Config{Filter: filter})
	if err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			return nil, fmt.Errorf("sniff: capturing on %s needs CAP_NET_RAW: %v", what, err)
		}
		return nil, fmt.Errorf("sniff: capturing on %s: %v", what, err)
	}
	rc, err := pc.SyscallConn()
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("sniff: %s: %v", what, err)
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		// The kernel moves a received frame's VLAN tag out of the data;
		// auxdata is the only place it can still be read.
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); serr != nil {
			return
		}
		// Kernel receive times, not wake-up times, so announcement
		// intervals can be measured.
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("sniff: %s: setsockopt: %v", what, err)
	}
	return &sock{pc: pc, rc: rc, name: name}, nil
}

// Close closes the sockets; Serve closes them itself when it returns.
func (s *Sniffer) Close() error {
	var first error
	for _, sk := range s.socks {
		if err := sk.pc.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Serve reads from the sockets until ctx ends, calling fn for each
// announcement, then closes them; call it once. It returns nil when ctx ended and the
// first read error otherwise.
func (s *Sniffer) Serve(ctx context.Context, fn func(Event)) error {
	defer s.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		for _, sk := range s.socks {
			sk.pc.SetReadDeadline(time.Unix(1, 0))
		}
	})
	defer stop()

	errc := make(chan error, len(s.socks))
	for _, sk := range s.socks {
		go func() {
			err := s.read(ctx, sk, fn)
			if err != nil {
				cancel()
			}
			errc <- err
		}()
	}
	var first error
	for range s.socks {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (s *Sniffer) read(ctx context.Context, sk *sock, fn func(Event)) error {
	// The head is left free so a tag from auxdata can be put back in place.
	buf := make([]byte, tagLen+snapLen)
	oob := make([]byte, unix.CmsgSpace(auxdataLen)+unix.CmsgSpace(int(unsafe.Sizeof(unix.Timespec{}))))
	for {
		var (
			n, oobn int
			from    unix.Sockaddr
			rerr    error
		)
		err := sk.rc.Read(func(fd uintptr) bool {
			n, oobn, _, from, rerr = unix.Recvmsg(int(fd), buf[tagLen:], oob, 0)
			return rerr != unix.EAGAIN
		})
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			err = rerr
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("sniff: reading %s: %v", sk.describe(), err)
		}
		sll, ok := from.(*unix.SockaddrLinklayer)
		if !ok || sll.Hatype != unix.ARPHRD_ETHER {
			continue // loopback, tunnels: no Ethernet header to decode
		}
		c := parseControl(oob[:oobn])
		f := buf[tagLen : tagLen+n]
		if c.vlanValid && n >= 12 {
			copy(buf, buf[tagLen:tagLen+12])
			binary.BigEndian.PutUint16(buf[12:], c.tpid)
			binary.BigEndian.PutUint16(buf[14:], c.tci)
			f = buf[:tagLen+n]
		}
		a, ok := Decode(f)
		if !ok {
			continue
		}
		ev := Event{Time: c.time, Interface: sk.name, Announcement: a}
		if ev.Time.IsZero() {
			ev.Time = time.Now()
		}
		if ev.Interface == "" {
			ev.Interface = sk.ifname(sll.Ifindex)
		}
		s.mu.Lock()
		fn(ev)
		s.mu.Unlock()
	}
}

func (sk *sock) describe() string {
	if sk.name == "" {
		return "all interfaces"
	}
	return sk.name
}

// ifname asks the socket's own network namespace, which need not be the
// calling thread's, for the name of interface index.
func (sk *sock) ifname(index int) string {
	var (
		name string
		ierr error
	)
	err := sk.rc.Control(func(fd uintptr) {
		var ifr unix.Ifreq
		ifr.SetUint32(uint32(index))
		if ierr = unix.IoctlIfreq(int(fd), unix.SIOCGIFNAME, &ifr); ierr == nil {
			name = ifr.Name()
		}
	})
	if err != nil || ierr != nil || name == "" {
		return "if" + strconv.Itoa(index)
	}
	return name
}

type control struct {
	vlanValid bool
	tpid, tci uint16
	time      time.Time
}

func parseControl(oob []byte) control {
	var c control
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return c
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.SOL_PACKET && m.Header.Type == unix.PACKET_AUXDATA && len(m.Data) >= auxdataLen:
			aux := (*unix.TpacketAuxdata)(unsafe.Pointer(&m.Data[0]))
			if aux.Status&unix.TP_STATUS_VLAN_VALID != 0 {
				c.vlanValid = true
				c.tci = aux.Vlan_tci
				c.tpid = tpid8021Q
				if aux.Status&unix.TP_STATUS_VLAN_TPID_VALID != 0 {
					c.tpid = aux.Vlan_tpid
				}
			}
		case m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS &&
			len(m.Data) >= int(unsafe.Sizeof(unix.Timespec{})):
			ts := (*unix.Timespec)(unsafe.Pointer(&m.Data[0]))
			c.time = time.Unix(ts.Unix())
		}
	}
	return c
}
