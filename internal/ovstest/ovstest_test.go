//go:build linux

package ovstest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/testenv"
)

// The harness itself: a netdev bridge with a veth port gets an ofport and a
// management socket, both daemons survive restarts, and nothing is left
// behind afterwards.
func TestStartRestart(t *testing.T) {
	testenv.RequireRoot(t)
	ns := netlab.TestNS(t, "ovs")
	o := Start(t, ns)
	o.AddBridge(t, "br0")
	ns.MustRun(t, "ip", "link", "add", "p0", "type", "veth", "peer", "name", "p0peer")
	ns.MustRun(t, "ip", "link", "set", "p0", "up")
	o.Vsctl(t, "add-port", "br0", "p0")
	if n := o.OFPort(t, "p0"); n <= 0 {
		t.Fatalf("ofport %d", n)
	}
	if _, err := os.Stat(filepath.Join(o.RunDir(), "br0.mgmt")); err != nil {
		t.Fatalf("no management socket: %v", err)
	}
	// The bridge's internal port must exist in the test namespace, not the host.
	ns.MustRun(t, "ip", "link", "show", "br0")

	o.RestartDB(t)
	if got := o.Vsctl(t, "list-ports", "br0"); got != "p0" {
		t.Fatalf("after ovsdb-server restart: ports %q", got)
	}
	o.RestartSwitch(t)
	if n := o.OFPort(t, "p0"); n <= 0 {
		t.Fatalf("after ovs-vswitchd restart: ofport %d", n)
	}
	if !strings.Contains(o.Appctl(t, "version"), "Open vSwitch") {
		t.Fatal("ovs-appctl version: unexpected output")
	}
	dir := o.Dir()
	t.Cleanup(func() {
		// Registered after Start's cleanup, so it runs before it: the
		// directory must still be there now and gone once the test ends.
		if _, err := os.Stat(dir); err != nil {
			t.Errorf("dir vanished early: %v", err)
		}
	})
}
