//go:build linux

package sniff_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/frame"
	"github.com/selfannounce/selfannounce/announce/sniff"
	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/testenv"
)

// collector gathers events from Serve; its key drops the time, which is
// checked separately.
type collector struct {
	mu     sync.Mutex
	events []sniff.Event
}

func (c *collector) add(e sniff.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.events = append(c.events, e)
}

// keys returns a sorted summary of the events about mac.
func (c *collector) keys(mac net.HardwareAddr) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ks []string
	for _, e := range c.events {
		if e.MAC.String() == mac.String() {
			ks = append(ks, key(e.Interface, e.Announcement))
		}
	}
	slices.Sort(ks)
	return ks
}

func key(iface string, a sniff.Announcement) string {
	return fmt.Sprintf("%s vlan=%d %s %s %s", iface, a.VLAN, a.Kind, a.MAC, a.IP)
}

// TestCaptureVeth writes announce/frame's frames, tagged and untagged, into
// one end of a veth pair and expects them from the other, where the kernel
// has moved any tag out of the data. A second sniffer on all interfaces also
// sees them leave the sending end with the tag still in the data.
func TestCaptureVeth(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "ip")
	ns := netlab.TestNS(t, "sniff")
	ns.MustRun(t, "ip", "link", "add", "tx0", "type", "veth", "peer", "name", "rx0")
	ns.MustRun(t, "ip", "link", "set", "tx0", "up")
	ns.MustRun(t, "ip", "link", "set", "rx0", "up")

	g := announce.Guest{
		MAC: net.HardwareAddr{0x52, 0x54, 0x00, 0xab, 0xcd, 0xef},
		IPs: []netip.Addr{
			netip.MustParseAddr("192.0.2.10"),
			netip.MustParseAddr("2001:db8::10"),
			netip.MustParseAddr("fe80::5054:ff:feab:cdef"),
		},
	}
	var frames [][]byte
	var wantRx, wantAll []string
	for _, vlan := range []uint16{0, 5} {
		fs, err := frame.Round(g, vlan)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fs {
			a, ok := sniff.Decode(f.Data)
			if !ok {
				t.Fatalf("cannot decode our own %s", f.Kind)
			}
			frames = append(frames, f.Data)
			wantRx = append(wantRx, key("rx0", a))
			wantAll = append(wantAll, key("rx0", a), key("tx0", a))
		}
	}
	// An 802.1ad-tagged GARP, whose TPID comes back through auxdata.
	ad, err := frame.GARP(g.MAC, g.IPs[0], 7)
	if err != nil {
		t.Fatal(err)
	}
	ad[12], ad[13] = 0x88, 0xa8
	frames = append(frames, ad)
	adA, _ := sniff.Decode(ad)
	wantRx = append(wantRx, key("rx0", adA))
	wantAll = append(wantAll, key("rx0", adA), key("tx0", adA))
	// Non-announcements from the same MAC must not show up.
	req := append([]byte(nil), frames[1]...)
	req[41]++ // target IP differs from sender IP: an ordinary ARP request
	frames = append(frames, req)
	slices.Sort(wantRx)
	slices.Sort(wantAll)

	var rxS, allS *sniff.Sniffer
	var tx *packet.Conn
	err = ns.Do(func() error {
		var err error
		if rxS, err = sniff.Open([]string{"rx0"}); err != nil {
			return err
		}
		if allS, err = sniff.Open(nil); err != nil {
			return err
		}
		ifi, err := net.InterfaceByName("tx0")
		if err != nil {
			return err
		}
		// Protocol 0: this socket only sends.
		tx, err = packet.Listen(ifi, packet.Raw, 0, nil)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()

	ctx, cancel := context.WithCancel(context.Background())
	var rx, all collector
	done := make(chan error, 2)
	go func() { done <- rxS.Serve(ctx, rx.add) }()
	go func() { done <- allS.Serve(ctx, all.add) }()

	start := time.Now()
	for _, b := range frames {
		if _, err := tx.WriteTo(b, &packet.Addr{HardwareAddr: net.HardwareAddr(b[0:6])}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && (len(rx.keys(g.MAC)) < len(wantRx) || len(all.keys(g.MAC)) < len(wantAll)) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // let duplicates, if any, arrive
	end := time.Now()
	cancel()
	for range 2 {
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}

	if got := rx.keys(g.MAC); !slices.Equal(got, wantRx) {
		t.Errorf("sniffer on rx0 saw\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantRx, "\n"))
	}
	if got := all.keys(g.MAC); !slices.Equal(got, wantAll) {
		t.Errorf("sniffer on all interfaces saw\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantAll, "\n"))
	}
	for _, e := range rx.events {
		if e.Time.Before(start.Add(-time.Second)) || e.Time.After(end) {
			t.Errorf("event time %v outside the test's %v..%v", e.Time, start, end)
		}
	}
}

// TestRunStopsWithContext checks Run returns nil once its context ends,
// even with nothing to read.
func TestRunStopsWithContext(t *testing.T) {
	testenv.RequireRoot(t)
	ns := netlab.TestNS(t, "sniffctx")
	err := ns.Do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		return sniff.Run(ctx, []string{"lo"}, func(sniff.Event) {})
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestOpenUnknownInterface(t *testing.T) {
	_, err := sniff.Open([]string{"nosuchif0"})
	if err == nil || !strings.Contains(err.Error(), `"nosuchif0"`) {
		t.Fatalf("error %v, want one naming nosuchif0", err)
	}
}

// TestOpenWithoutCapNetRaw drops CAP_NET_RAW from one thread, which is
// where Linux keeps capabilities, and opens a sniffer from it.
func TestOpenWithoutCapNetRaw(t *testing.T) {
	testenv.RequireRoot(t)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread dies with the goroutine, taking
		// its reduced capabilities with it.
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- err
			return
		}
		data[0].Effective &^= 1 << unix.CAP_NET_RAW
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- err
			return
		}
		s, err := sniff.Open([]string{"lo"})
		if err == nil {
			s.Close()
			err = fmt.Errorf("opened without CAP_NET_RAW")
		} else if !strings.Contains(err.Error(), "needs CAP_NET_RAW") {
			err = fmt.Errorf("error %q does not say CAP_NET_RAW is needed", err)
		} else {
			err = nil
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}
