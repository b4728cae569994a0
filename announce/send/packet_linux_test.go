//go:build linux

package send

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/testenv"
)

const ethPAll = 0x0003

func ifindex(t *testing.T, ns *netlab.NS, name string) int {
	t.Helper()
	s := ns.MustRun(t, "cat", "/sys/class/net/"+name+"/ifindex")
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("ifindex of %s: %q", name, s)
	}
	return n
}

// vethNS returns a namespace holding an up veth pair a0 <-> b0 with IPv6
// off, so nothing but the test's frames crosses it.
func vethNS(t *testing.T) *netlab.NS {
	ns := netlab.TestNS(t, "send")
	if _, err := ns.Sh(`
sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip link add a0 type veth peer name b0
ip link set a0 up
ip link set b0 up`); err != nil {
		t.Fatal(err)
	}
	return ns
}

func TestSendOnVeth(t *testing.T) {
	testenv.RequireRoot(t)
	ns := vethNS(t)
	a0, b0 := ifindex(t, ns, "a0"), ifindex(t, ns, "b0")

	frames := [][]byte{
		rarp(net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}),
		rarp(net.HardwareAddr{0x52, 0x54, 0x00, 0xab, 0xcd, 0xef}),
	}
	err := ns.Do(func() error {
		rx, err := packet.Listen(&net.Interface{Index: b0}, packet.Raw, ethPAll, nil)
		if err != nil {
			return err
		}
		defer rx.Close()
		s := NewPacketSender()
		defer s.Close()
		for _, f := range frames {
			// The second send reuses the cached socket.
			if err := s.Send(a0, f); err != nil {
				return err
			}
		}
		rx.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 2048)
		for i, want := range frames {
			n, _, err := rx.ReadFrom(buf)
			if err != nil {
				return fmt.Errorf("frame %d not received on b0: %v", i, err)
			}
			if !bytes.Equal(buf[:n], want) {
				t.Errorf("frame %d on b0:\n%x\nsent\n%x", i, buf[:n], want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestSendErrors(t *testing.T) {
	testenv.RequireRoot(t)
	ns := vethNS(t)
	a0 := ifindex(t, ns, "a0")
	err := ns.Do(func() error {
		s := NewPacketSender()
		f := rarp(net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56})
		if err := s.Send(9999, f); err == nil || err.Error() != "no network device with ifindex 9999" {
			t.Errorf("unknown ifindex: %v", err)
		}
		if err := s.Send(a0, f[:13]); err == nil || !strings.Contains(err.Error(), "shorter than an Ethernet header") {
			t.Errorf("short frame: %v", err)
		}
		if _, err := ns.Run("ip", "link", "set", "a0", "down"); err != nil {
			return err
		}
		if err := s.Send(a0, f); err == nil || !strings.Contains(err.Error(), "device is down") {
			t.Errorf("down device: %v", err)
		}
		if _, err := ns.Run("ip", "link", "set", "a0", "up"); err != nil {
			return err
		}
		if err := s.Send(a0, f); err != nil {
			t.Errorf("device up again: %v", err)
		}
		s.Close()
		if err := s.Send(a0, f); err == nil || err.Error() != "sender is closed" {
			t.Errorf("after Close: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Without CAP_NET_RAW both CheckRaw and the first Send must say so in one
// line. capset(2) changes only the calling thread, which is then discarded.
func TestNoRawCapability(t *testing.T) {
	testenv.RequireRoot(t)
	if err := CheckRaw(); err != nil {
		t.Fatalf("CheckRaw as root: %v", err)
	}
	errc := make(chan [2]error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- [2]error{err, err}
			return
		}
		data[0].Effective &^= 1 << unix.CAP_NET_RAW
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- [2]error{err, err}
			return
		}
		s := NewPacketSender()
		defer s.Close()
		errc <- [2]error{CheckRaw(), s.Send(1, rarp(net.HardwareAddr{0x52, 0x54, 0, 1, 2, 3}))}
	}()
	errs := <-errc
	for i, err := range errs {
		if !errors.Is(err, ErrNoRawCapability) || strings.Contains(err.Error(), "\n") {
			t.Errorf("error %d: %v, want %v", i, err, ErrNoRawCapability)
		}
	}
}

// rarp builds QEMU's 60-byte announce-self frame for mac.
func rarp(mac net.HardwareAddr) []byte {
	f := make([]byte, 60)
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], mac)
	copy(f[12:22], []byte{0x80, 0x35, 0, 1, 0x08, 0, 6, 4, 0, 3})
	copy(f[22:28], mac)
	copy(f[32:38], mac)
	return f
}
