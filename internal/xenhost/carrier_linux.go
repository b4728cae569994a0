//go:build linux

package xenhost

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

// CarrierWatch records when netback vifs gain carrier, from one rtnetlink
// socket in the caller's namespace (dom0's). It is also the latency floor:
// given a floor frame, it writes that frame on an uplink the moment it
// reads the first carrier of a new vif, one AF_PACKET send and nothing
// else, so the floor is what reading a link event and sending one frame
// cost on this host, with no resolution, no planning, no bridge repair.
type CarrierWatch struct {
	fd      int
	skip    string // the vif the guest has now: its carrier is old news
	emu     bool   // watch vifN.M-emu taps, not netback vifs
	floor   *packet.Conn
	frame   []byte
	mu      sync.Mutex
	carrier map[string]time.Time
	floorAt time.Time
	done    chan struct{}
}

// WatchCarrier starts watching netback vifs. skip is the guest's current
// vif. When floorDev is not empty, frame goes out on it at the first new
// carrier.
func WatchCarrier(skip, floorDev string, frame []byte) (*CarrierWatch, error) {
	return watchCarrier(skip, floorDev, frame, false)
}

// WatchTapCarrier watches xl's emulated-NIC taps (vifN.M-emu) instead.
func WatchTapCarrier(skip string) (*CarrierWatch, error) {
	return watchCarrier(skip, "", nil, true)
}

func watchCarrier(skip, floorDev string, frame []byte, emu bool) (*CarrierWatch, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_LINK}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	w := &CarrierWatch{fd: fd, skip: skip, frame: frame, emu: emu, carrier: map[string]time.Time{}, done: make(chan struct{})}
	if floorDev != "" {
		ifi, err := net.InterfaceByName(floorDev)
		if err == nil {
			w.floor, err = packet.Listen(ifi, packet.Raw, 0, nil)
		}
		if err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("floor socket on %s: %w", floorDev, err)
		}
	}
	go w.loop()
	return w, nil
}

func (w *CarrierWatch) loop() {
	defer close(w.done)
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(w.fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return
		}
		now := time.Now()
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		for _, m := range msgs {
			if m.Header.Type != unix.RTM_NEWLINK || len(m.Data) < unix.SizeofIfInfomsg {
				continue
			}
			ifi := (*unix.IfInfomsg)(unsafe.Pointer(&m.Data[0]))
			if ifi.Flags&unix.IFF_LOWER_UP == 0 {
				continue
			}
			attrs, err := syscall.ParseNetlinkRouteAttr(&m)
			if err != nil {
				continue
			}
			name := ""
			for _, a := range attrs {
				if a.Attr.Type == unix.IFLA_IFNAME {
					name = strings.TrimRight(string(a.Value), "\x00")
				}
			}
			if !strings.HasPrefix(name, "vif") || strings.HasSuffix(name, "-emu") != w.emu || name == w.skip {
				continue
			}
			w.mu.Lock()
			first := len(w.carrier) == 0
			if _, ok := w.carrier[name]; !ok {
				w.carrier[name] = now
			}
			w.mu.Unlock()
			if first && w.floor != nil {
				w.floor.WriteTo(w.frame, &packet.Addr{HardwareAddr: net.HardwareAddr(w.frame[:6])})
				w.mu.Lock()
				w.floorAt = time.Now()
				w.mu.Unlock()
			}
		}
	}
}

// Carrier returns the first new vif with carrier and when it was read,
// waiting up to d.
func (w *CarrierWatch) Carrier(d time.Duration) (string, time.Time, error) {
	end := time.Now().Add(d)
	for {
		w.mu.Lock()
		var name string
		var at time.Time
		for n, t := range w.carrier {
			if name == "" || t.Before(at) {
				name, at = n, t
			}
		}
		w.mu.Unlock()
		if name != "" {
			return name, at, nil
		}
		if time.Now().After(end) {
			return "", time.Time{}, fmt.Errorf("no new vif gained carrier within %v", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Close stops watching.
func (w *CarrierWatch) Close() {
	unix.Shutdown(w.fd, unix.SHUT_RDWR)
	unix.Close(w.fd)
	if w.floor != nil {
		w.floor.Close()
	}
}

// FloorFrame is the floor's frame: broadcast, from src, IEEE local
// experimental ethertype 2, so nothing mistakes it for an announcement.
func FloorFrame(src net.HardwareAddr) []byte {
	f := make([]byte, 60)
	copy(f, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:], src)
	f[12], f[13] = 0x88, 0xb6
	copy(f[14:], "selfannounce floor")
	return f
}
