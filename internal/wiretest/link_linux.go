//go:build linux

package wiretest

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/selfannounce/selfannounce/internal/netlab"
)

// Inject writes whole frames on ifname from inside ns, each to its own
// destination MAC.
func Inject(ns *netlab.NS, ifname string, frames ...[]byte) error {
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		c, err := packet.Listen(ifi, packet.Raw, 0, nil)
		if err != nil {
			return err
		}
		defer c.Close()
		for _, f := range frames {
			if _, err := c.WriteTo(f, &packet.Addr{HardwareAddr: net.HardwareAddr(f[:6])}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("injecting on %s in %s: %v", ifname, ns.Name, err)
	}
	return nil
}

// Toggler sets links of one namespace up and down with one ioctl each:
// fast enough to flap a link on a 50 ms beat, which `ip` cannot, and with
// no process start-up between the timestamp and the change.
type Toggler struct {
	ns *netlab.NS
	fd int
}

// NewToggler opens the socket the ioctls go through; it closes at test end.
func NewToggler(t testing.TB, ns *netlab.NS) *Toggler {
	t.Helper()
	tg := &Toggler{ns: ns, fd: -1}
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		tg.fd = fd
		return err
	})
	if err != nil {
		t.Fatalf("link ioctl socket in %s: %v", ns.Name, err)
	}
	t.Cleanup(func() { unix.Close(tg.fd) })
	return tg
}

// Set sets link name admin up or down and returns the moment just before
// the change: for a veth, raising one end raises the carrier of the other.
func (tg *Toggler) Set(name string, up bool) (time.Time, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return time.Time{}, err
	}
	if err := unix.IoctlIfreq(tg.fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return time.Time{}, fmt.Errorf("%s/%s: %v", tg.ns.Name, name, err)
	}
	f := ifr.Uint16()
	if up {
		f |= unix.IFF_UP
	} else {
		f &^= unix.IFF_UP
	}
	ifr.SetUint16(f)
	at := time.Now()
	if err := unix.IoctlIfreq(tg.fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return time.Time{}, fmt.Errorf("%s/%s: %v", tg.ns.Name, name, err)
	}
	return at, nil
}

// BrportState is a bridge port's STP state (3 = forwarding) from sysfs
// inside ns.
func BrportState(ns *netlab.NS, port string) (int, error) {
	out, err := ns.Run("cat", "/sys/class/net/"+port+"/brport/state")
	if err != nil {
		return -1, err
	}
	return strconv.Atoi(strings.TrimSpace(out))
}

// WaitForwarding waits up to timeout for each bridge port to reach STP
// state 3 (forwarding), and fails the test otherwise: a bridge forwards on
// a new port only once the kernel's link watch has seen its carrier.
func WaitForwarding(t testing.TB, ns *netlab.NS, timeout time.Duration, ports ...string) {
	t.Helper()
	for _, p := range ports {
		deadline := time.Now().Add(timeout)
		for {
			st, err := BrportState(ns, p)
			if err == nil && st == 3 {
				break
			}
			if err == nil {
				err = fmt.Errorf("%s: port %s in STP state %d, want 3 (forwarding)", ns.Name, p, st)
			}
			if time.Now().After(deadline) {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
