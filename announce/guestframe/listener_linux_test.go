//go:build linux

package guestframe

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/testenv"
)

var (
	guestMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	otherMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x99}
	bcast    = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
)

// rarp is QEMU's announce-self frame for mac.
func rarp(mac net.HardwareAddr) []byte {
	f := make([]byte, 60)
	copy(f, bcast)
	copy(f[6:], mac)
	copy(f[12:], []byte{0x80, 0x35, 0, 1, 8, 0, 6, 4, 0, 3})
	copy(f[22:], mac)
	copy(f[32:], mac)
	return f
}

// newNS creates a namespace whose kernel stays silent: IPv6 autoconf would
// otherwise make the "guest" talk on its own.
func newNS(t *testing.T, role string) *netlab.NS {
	t.Helper()
	ns := netlab.TestNS(t, role)
	ns.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	return ns
}

func ifindex(t *testing.T, ns *netlab.NS, name string) int {
	t.Helper()
	var idx int
	if err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(name)
		if err == nil {
			idx = ifi.Index
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return idx
}

// packetConn opens a raw packet socket on name inside ns.
func packetConn(t *testing.T, ns *netlab.NS, name string) *packet.Conn {
	t.Helper()
	var c *packet.Conn
	if err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			return err
		}
		c, err = packet.Listen(ifi, packet.Raw, unix.ETH_P_ALL, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func listen(t *testing.T, ns *netlab.NS, name string) *Listener {
	t.Helper()
	idx := ifindex(t, ns, name)
	var l *Listener
	if err := ns.Do(func() (err error) { l, err = Listen(idx); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// awaitFrame reads r until a frame with source src arrives.
func awaitFrame(t *testing.T, read func([]byte) (int, error), src net.HardwareAddr) {
	t.Helper()
	b := make([]byte, 2048)
	for {
		n, err := read(b)
		if err != nil {
			t.Fatalf("waiting for a frame from %v: %v", src, err)
		}
		if n >= 12 && bytes.Equal(b[6:12], src) {
			return
		}
	}
}

// assertSilent checks that Wait sees nothing for a while.
func assertSilent(t *testing.T, l *Listener, why string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if src, _, err := l.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%s: Wait = %v, %v; want no frame", why, src, err)
	}
}

func assertGuestFrame(t *testing.T, l *Listener, send func()) {
	t.Helper()
	before := time.Now()
	send()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	src, at, err := l.Wait(ctx)
	after := time.Now()
	if err != nil {
		t.Fatalf("Wait after the guest spoke: %v", err)
	}
	if !bytes.Equal(src, guestMAC) {
		t.Errorf("Wait returned source %v, want %v", src, guestMAC)
	}
	if at.Before(before.Add(-time.Millisecond)) || at.After(after) {
		t.Errorf("receive time %v outside [%v, %v]", at, before, after)
	}
	t.Logf("frame received %v after send, Wait returned %v after that", at.Sub(before), after.Sub(at))
}

// bridgeLab is br0 with an uplink-like port whose far end (ext) stays in the
// bridge namespace, for flooding frames towards the guest.
func bridgeLab(t *testing.T) *netlab.NS {
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "ip", "sysctl")
	br := newNS(t, "gfb")
	if out, err := br.Sh(`
ip link add br0 type bridge stp_state 0
ip link set br0 up
ip link add up0 type veth peer name ext
ip link set up0 master br0 up
ip link set ext up`); err != nil {
		t.Fatal(out, err)
	}
	return br
}

// waitForwarding waits for the bridge to enable port: carrier reaches the
// bridge through linkwatch, up to a second after the device got it, and a
// disabled port drops floods.
func waitForwarding(t *testing.T, ns *netlab.NS, port string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _ := ns.Run("cat", "/sys/class/net/"+port+"/brport/state")
		if out == "3" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not forwarding (state %q)", port, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestVethGuest(t *testing.T) {
	br := bridgeLab(t)
	guest := newNS(t, "gfg")
	if out, err := br.Sh(`
ip link add vif type veth peer name eth0
ip link set eth0 netns ` + guest.Name + `
ip link set vif master br0 up`); err != nil {
		t.Fatal(out, err)
	}
	guest.MustRun(t, "ip", "link", "set", "eth0", "up")

	waitForwarding(t, br, "vif")
	waitForwarding(t, br, "up0")
	l := listen(t, br, "vif")
	ext := packetConn(t, br, "ext")
	eth0 := packetConn(t, guest, "eth0")

	// A broadcast from elsewhere is flooded out through vif to the guest.
	if _, err := ext.WriteTo(rarp(otherMAC), &packet.Addr{HardwareAddr: bcast}); err != nil {
		t.Fatal(err)
	}
	eth0.SetReadDeadline(time.Now().Add(2 * time.Second))
	awaitFrame(t, func(b []byte) (int, error) { n, _, err := eth0.ReadFrom(b); return n, err }, otherMAC)
	assertSilent(t, l, "broadcast flooded to the guest")

	// A frame the guest sends with a multicast source is not the guest.
	bad := rarp(guestMAC)
	bad[6] |= 1
	if _, err := eth0.WriteTo(bad, &packet.Addr{HardwareAddr: bcast}); err != nil {
		t.Fatal(err)
	}
	assertSilent(t, l, "multicast source")

	assertGuestFrame(t, l, func() {
		if _, err := eth0.WriteTo(rarp(guestMAC), &packet.Addr{HardwareAddr: bcast}); err != nil {
			t.Fatal(err)
		}
	})
}

// openTap attaches to tap name in ns as QEMU does; frames written to the
// returned file enter the host as if the guest sent them.
func openTap(t *testing.T, ns *netlab.NS, name string) *os.File {
	t.Helper()
	var f *os.File
	if err := ns.Do(func() error {
		// The tun device binds to the namespace of the opener.
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			unix.Close(fd)
			return err
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return err
		}
		f = os.NewFile(uintptr(fd), name)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestTapGuest(t *testing.T) {
	br := bridgeLab(t)
	if out, err := br.Sh(`
ip tuntap add dev tap0 mode tap
ip link set tap0 master br0 up`); err != nil {
		t.Fatal(out, err)
	}
	tap := openTap(t, br, "tap0")
	waitForwarding(t, br, "tap0")
	waitForwarding(t, br, "up0")
	l := listen(t, br, "tap0")
	ext := packetConn(t, br, "ext")

	if _, err := ext.WriteTo(rarp(otherMAC), &packet.Addr{HardwareAddr: bcast}); err != nil {
		t.Fatal(err)
	}
	tap.SetReadDeadline(time.Now().Add(2 * time.Second))
	awaitFrame(t, tap.Read, otherMAC)
	assertSilent(t, l, "broadcast flooded to the guest")

	assertGuestFrame(t, l, func() {
		if _, err := tap.Write(rarp(guestMAC)); err != nil {
			t.Fatal(err)
		}
	})
}

// The daemon listens from the moment a port is created, which is admin-down;
// the kernel then reports ENETDOWN once, and that must not end the wait.
func TestTapCreatedDown(t *testing.T) {
	br := bridgeLab(t)
	if out, err := br.Sh(`ip tuntap add dev tap0 mode tap`); err != nil {
		t.Fatal(out, err)
	}
	l := listen(t, br, "tap0")
	if out, err := br.Sh(`ip link set tap0 master br0 up`); err != nil {
		t.Fatal(out, err)
	}
	tap := openTap(t, br, "tap0")
	waitForwarding(t, br, "tap0")
	assertGuestFrame(t, l, func() {
		if _, err := tap.Write(rarp(guestMAC)); err != nil {
			t.Fatal(err)
		}
	})
}

func TestWaitEnds(t *testing.T) {
	br := bridgeLab(t)
	l := listen(t, br, "up0")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := l.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait with a cancelled context = %v", err)
	}
	// A later Wait is not cut short by the earlier cancellation.
	assertSilent(t, l, "idle port")

	done := make(chan error, 1)
	go func() { _, _, err := l.Wait(context.Background()); done <- err }()
	time.Sleep(50 * time.Millisecond)
	l.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Wait after Close = %v, want net.ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not end Wait")
	}
}

func TestListenRejectsBadIndex(t *testing.T) {
	if _, err := Listen(0); err == nil {
		t.Error("Listen(0) succeeded")
	}
}
