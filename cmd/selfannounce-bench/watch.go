//go:build linux

package main

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/selfannounce/selfannounce/internal/netlab"
)

// carrierEvent is the kernel's notice that a link gained carrier.
type carrierEvent struct {
	name string
	at   time.Time
}

// wireFrame is one frame seen on the switch side of the uplink.
type wireFrame struct {
	at   time.Time // kernel receive timestamp (SO_TIMESTAMPNS)
	src  net.HardwareAddr
	kind string // "rarp", "arp", "other"
	spa  netip.Addr
}

// recorder collects carrier events and frames from both sockets.
type recorder struct {
	mu       sync.Mutex
	cond     *sync.Cond
	carriers []carrierEvent
	frames   []wireFrame
	nlTS     bool // netlink carried a kernel timestamp
	stop     atomic.Bool
	wg       sync.WaitGroup
	errs     []error
}

func newRecorder() *recorder {
	r := &recorder{}
	r.cond = sync.NewCond(&r.mu)
	return r
}

// reset forgets everything seen so far (between phases).
func (r *recorder) reset() {
	r.mu.Lock()
	r.carriers, r.frames = nil, nil
	r.mu.Unlock()
}

func (r *recorder) snapshot() ([]carrierEvent, []wireFrame) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]carrierEvent(nil), r.carriers...), append([]wireFrame(nil), r.frames...)
}

// drain returns the frames recorded since the last drain or reset and
// forgets them: a soak records too many to copy on every look.
func (r *recorder) drain() []wireFrame {
	r.mu.Lock()
	defer r.mu.Unlock()
	fs := r.frames
	r.frames = nil
	return fs
}

// waitFor blocks until ok holds for what has been recorded, or timeout.
func (r *recorder) waitFor(timeout time.Duration, ok func(c []carrierEvent, f []wireFrame) bool) bool {
	deadline := time.Now().Add(timeout)
	t := time.AfterFunc(timeout, func() { r.mu.Lock(); r.cond.Broadcast(); r.mu.Unlock() })
	defer t.Stop()
	r.mu.Lock()
	defer r.mu.Unlock()
	for !ok(r.carriers, r.frames) {
		if time.Now().After(deadline) {
			return false
		}
		r.cond.Wait()
	}
	return true
}

func (r *recorder) fail(err error) {
	r.mu.Lock()
	r.errs = append(r.errs, err)
	r.cond.Broadcast()
	r.mu.Unlock()
}

func (r *recorder) close() {
	r.stop.Store(true)
	r.wg.Wait()
}

// watchCarrier subscribes to RTNLGRP_LINK in the host namespace and records
// each link's transition to IFF_LOWER_UP. Netlink sockets carry no receive
// timestamps, so the time is taken right after a blocking recv on a thread
// of its own (an SO_TIMESTAMPNS cmsg is used if the kernel ever adds one).
func (r *recorder) watchCarrier(host *netlab.NS) error {
	var fd int
	if err := host.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
		if err != nil {
			return err
		}
		// 1000 links changing at once must not overrun the socket.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20); err != nil {
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 32<<20)
		}
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
		return unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1 << (unix.RTNLGRP_LINK - 1)})
	}); err != nil {
		if fd > 0 {
			unix.Close(fd)
		}
		return err
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer unix.Close(fd)
		runtime.LockOSThread()
		buf := make([]byte, 1<<16)
		oob := make([]byte, 256)
		lower := map[int32]bool{}
		for !r.stop.Load() {
			n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, 0)
			at := time.Now()
			if err != nil {
				if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
					continue
				}
				r.fail(err)
				return
			}
			if ts, ok := cmsgTime(oob[:oobn]); ok {
				at = ts
				r.nlTS = true
			}
			msgs, err := syscall.ParseNetlinkMessage(buf[:n])
			if err != nil {
				continue
			}
			var got []carrierEvent
			for _, m := range msgs {
				if m.Header.Type != unix.RTM_NEWLINK || len(m.Data) < unix.SizeofIfInfomsg {
					continue
				}
				ix := int32(binary.NativeEndian.Uint32(m.Data[4:]))
				up := binary.NativeEndian.Uint32(m.Data[8:])&unix.IFF_LOWER_UP != 0
				if up && !lower[ix] {
					got = append(got, carrierEvent{name: ifName(m.Data[unix.SizeofIfInfomsg:]), at: at})
				}
				lower[ix] = up
			}
			if len(got) > 0 {
				r.mu.Lock()
				r.carriers = append(r.carriers, got...)
				r.cond.Broadcast()
				r.mu.Unlock()
			}
		}
	}()
	return nil
}

func ifName(attrs []byte) string {
	for len(attrs) >= 4 {
		l := int(binary.NativeEndian.Uint16(attrs))
		t := binary.NativeEndian.Uint16(attrs[2:])
		if l < 4 || l > len(attrs) {
			return ""
		}
		if t == unix.IFLA_IFNAME {
			v := attrs[4:l]
			for i, c := range v {
				if c == 0 {
					v = v[:i]
					break
				}
			}
			return string(v)
		}
		attrs = attrs[(l+3)&^3:]
	}
	return ""
}

func cmsgTime(oob []byte) (time.Time, bool) {
	cms, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return time.Time{}, false
	}
	for _, c := range cms {
		if c.Header.Level == unix.SOL_SOCKET && c.Header.Type == unix.SCM_TIMESTAMPNS && len(c.Data) >= 16 {
			sec := int64(binary.NativeEndian.Uint64(c.Data))
			nsec := int64(binary.NativeEndian.Uint64(c.Data[8:]))
			return time.Unix(sec, nsec), true
		}
	}
	return time.Time{}, false
}

// capture records every frame arriving on sw0, the switch side of the
// uplink, with the kernel's receive timestamp.
func (r *recorder) capture(sw *netlab.NS, ifname string) error {
	var fd int
	proto := int(htons(unix.ETH_P_ALL))
	if err := sw.Do(func() error {
		ifc, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20); err != nil {
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 32<<20)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
			return err
		}
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifc.Index})
	}); err != nil {
		if fd > 0 {
			unix.Close(fd)
		}
		return err
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer unix.Close(fd)
		runtime.LockOSThread()
		buf := make([]byte, 2048)
		oob := make([]byte, 256)
		for !r.stop.Load() {
			n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, 0)
			if err != nil {
				if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
					continue
				}
				r.fail(err)
				return
			}
			at, ok := cmsgTime(oob[:oobn])
			if !ok {
				at = time.Now()
			}
			if n < 14 {
				continue
			}
			f := wireFrame{at: at, src: append(net.HardwareAddr(nil), buf[6:12]...), kind: "other"}
			switch binary.BigEndian.Uint16(buf[12:]) {
			case 0x8035:
				f.kind = "rarp"
			case 0x0806:
				f.kind = "arp"
				if n >= 32 {
					f.spa = netip.AddrFrom4([4]byte(buf[28:32]))
				}
			}
			r.mu.Lock()
			r.frames = append(r.frames, f)
			r.cond.Broadcast()
			r.mu.Unlock()
		}
	}()
	return nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
