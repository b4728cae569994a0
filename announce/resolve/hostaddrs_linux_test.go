//go:build linux

package resolve_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/selfannounce/selfannounce/announce/resolve"
	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/testenv"
)

func TestSystemHostAddrs(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "ip")
	ns := netlab.TestNS(t, "hostaddrs")
	if _, err := ns.Sh(`
ip link add uplink0 address 02:aa:00:00:00:01 type veth peer name vnet0 address fe:54:00:00:00:02
ip link add br0 address 02:aa:00:00:00:03 type bridge
ip link set uplink0 up
ip link set vnet0 up
ip addr add 192.0.2.10/24 dev uplink0
ip addr add 2001:db8::10/64 dev uplink0 nodad
ip addr add 198.51.100.1/32 dev vnet0
ip addr add 203.0.113.1 peer 203.0.113.2 dev uplink0
`); err != nil {
		t.Fatal(err)
	}
	if _, err := resolve.SystemHostAddrs([]string{"bad["}); err == nil {
		t.Fatal("malformed glob accepted")
	}
	h, err := resolve.SystemHostAddrs([]string{"vnet*"})
	if err != nil {
		t.Fatal(err)
	}
	var macs []net.HardwareAddr
	var ips []netip.Addr
	if err := ns.Do(func() (err error) {
		macs, ips, err = h.Owned(context.Background())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	has := map[string]bool{}
	for _, m := range macs {
		has[m.String()] = true
	}
	for _, ip := range ips {
		has[ip.String()] = true
	}
	for _, want := range []string{"02:aa:00:00:00:01", "02:aa:00:00:00:03", "192.0.2.10", "2001:db8::10", "198.51.100.1", "127.0.0.1", "::1"} {
		if !has[want] {
			t.Errorf("host-owned %s missing from %v %v", want, macs, ips)
		}
	}
	if has["203.0.113.2"] {
		t.Error("a point-to-point peer's address listed as the host's")
	}
	if !has["203.0.113.1"] {
		t.Error("the local end of a point-to-point address is missing")
	}
	// The address-only dump the daemon uses lists the same addresses.
	var only []netip.Addr
	if err := ns.Do(func() (err error) {
		only, err = resolve.SystemHostIPs(context.Background())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(only) != fmt.Sprint(ips) {
		t.Errorf("SystemHostIPs = %v, Owned listed %v", only, ips)
	}
	if has["fe:54:00:00:00:02"] {
		t.Error("VM port vnet0's MAC listed as the host's")
	}
	if len(macs) != 2 {
		t.Errorf("MACs %v: want exactly uplink0 and br0 (lo has none)", macs)
	}
}

// The lister keeps its socket, never its answer: an address added between
// two calls is in the second.
func TestHostIPListerSeesNewAddresses(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "ip")
	ns := netlab.TestNS(t, "hostips")
	ns.MustRun(t, "ip", "link", "set", "lo", "up")
	var h resolve.HostIPLister
	defer h.Close()
	list := func() map[string]bool {
		t.Helper()
		var ips []netip.Addr
		if err := ns.Do(func() (err error) {
			ips, err = h.List(context.Background())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		has := map[string]bool{}
		for _, ip := range ips {
			has[ip.String()] = true
		}
		return has
	}
	if has := list(); !has["127.0.0.1"] || has["192.0.2.77"] {
		t.Fatalf("first list %v: want 127.0.0.1 and not 192.0.2.77", has)
	}
	ns.MustRun(t, "ip", "addr", "add", "192.0.2.77/32", "dev", "lo")
	if has := list(); !has["192.0.2.77"] {
		t.Fatalf("second list %v misses the address just added", has)
	}
}
