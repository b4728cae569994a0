//go:build linux

package linuxbr

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/selfannounce/selfannounce/announce/send"
	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/testenv"
	"github.com/selfannounce/selfannounce/internal/wiretest"
)

// lab is a Linux-bridge host: br0 with uplink up0 (peer sw0 in the switch
// namespace) and VM port vif1.0 (peer eth0 in the guest namespace); br1 with
// only the VM port vif2.0; and lone0, a veth on no bridge.
type lab struct {
	host, sw, guest *netlab.NS
}

func newLab(t *testing.T) *lab {
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "ip", "bridge", "sysctl")
	l := &lab{host: netlab.TestNS(t, "host"), sw: netlab.TestNS(t, "sw"), guest: netlab.TestNS(t, "guest")}
	// IPv6 off everywhere so no stray neighbour discovery teaches the bridge
	// addresses while the test compares FDBs.
	for _, ns := range []*netlab.NS{l.host, l.sw, l.guest} {
		ns.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	}
	script := fmt.Sprintf(`
ip link add br0 type bridge forward_delay 0
ip link add up0 type veth peer name sw0
ip link set sw0 netns %[1]s
ip link add vif1.0 type veth peer name eth0
ip link set eth0 netns %[2]s
ip link set up0 master br0
ip link set vif1.0 master br0
ip link add br1 type bridge forward_delay 0
ip link add vif2.0 type veth peer name eth1
ip link set eth1 netns %[2]s
ip link set vif2.0 master br1
ip link add lone0 type veth peer name lone1
for d in br0 up0 vif1.0 br1 vif2.0 lone0 lone1; do ip link set $d up; done
`, l.sw.Name, l.guest.Name)
	if _, err := l.host.Sh(script); err != nil {
		t.Fatal(err)
	}
	l.sw.MustRun(t, "ip", "link", "set", "sw0", "up")
	l.guest.MustRun(t, "ip", "link", "set", "eth0", "up")
	l.guest.MustRun(t, "ip", "link", "set", "eth1", "up")
	// Carrier reaches a veth's bridge port only when the kernel's link
	// watch runs (up to a second, longer on a loaded machine): until then
	// the uplink has "no carrier" and Resolve rightly refuses it.
	wiretest.WaitForwarding(t, l.host, 10*time.Second, "up0", "vif1.0", "vif2.0")
	return l
}

func (l *lab) link(t *testing.T, ns *netlab.NS, name string) Link {
	t.Helper()
	idx, err := strconv.Atoi(ns.MustRun(t, "cat", "/sys/class/net/"+name+"/ifindex"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := net.ParseMAC(ns.MustRun(t, "cat", "/sys/class/net/"+name+"/address"))
	if err != nil {
		t.Fatal(err)
	}
	return Link{Name: name, Index: idx, MAC: m}
}

// inNS runs fn with a Linux Host of ns. sysfs shows the network namespace
// it was mounted from, so fn gets a private mount of a fresh sysfs, made in
// a mount namespace of its own on a thread already switched into ns, as
// `ip netns exec` does.
func inNS(t *testing.T, ns *netlab.NS, fn func(Host) error) error {
	dir := t.TempDir()
	return ns.Do(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			return fmt.Errorf("unshare mount namespace: %w", err)
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			return fmt.Errorf("make mounts private: %w", err)
		}
		if err := unix.Mount("sysfs", dir, "sysfs", 0, ""); err != nil {
			return fmt.Errorf("mount sysfs: %w", err)
		}
		return fn(NewHost(dir))
	})
}

func TestE2EResolve(t *testing.T) {
	l := newLab(t)
	var got *Path
	errs := map[string]error{}
	var upKind string
	var upVLANs []VLAN
	var upVLANErr error
	err := inNS(t, l.host, func(h Host) error {
		var err error
		if got, err = Resolve(h, "vif1.0", nil); err != nil {
			return err
		}
		for _, port := range []string{"lone0", "nosuch0", "vif2.0", "br0"} {
			_, errs[port] = Resolve(h, port, nil)
		}
		// veths are untyped in sysfs: the kind comes from rtnetlink, which
		// must be asked in this namespace.
		if upKind, err = h.Kind("up0"); err != nil {
			return err
		}
		upVLANs, upVLANErr = NetlinkVLANTable(got.Uplinks[0].Index)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := &Path{
		Port:    l.link(t, l.host, "vif1.0"),
		Bridge:  l.link(t, l.host, "br0"),
		Uplinks: []Uplink{{Link: l.link(t, l.host, "up0")}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Resolve(vif1.0) = %+v\nwant %+v", got, want)
	}
	for port, want := range map[string]struct {
		err error
		msg string
	}{
		"lone0":   {ErrNotBridgePort, `interface "lone0" is not a bridge port (it has no master)`},
		"br0":     {ErrNotBridgePort, `interface "br0" is not a bridge port (it has no master)`},
		"nosuch0": {ErrNotFound, `interface "nosuch0" does not exist`},
		"vif2.0":  {ErrNoUplink, `bridge "br1" has no uplink (every port matches vif*, tap*, vnet*)`},
	} {
		if err := errs[port]; !errors.Is(err, want.err) || err.Error() != want.msg {
			t.Errorf("Resolve(%s) = %v, want %q", port, err, want.msg)
		}
	}
	if upKind != KindVeth {
		t.Errorf("Kind(up0) = %q, want veth", upKind)
	}
	// This kernel has no VLAN filtering: the dump must work and be empty.
	if upVLANErr != nil || len(upVLANs) != 0 {
		t.Errorf("NetlinkVLANTable(up0) = %v, %v", upVLANs, upVLANErr)
	}
}

// fdbLine is one line of `bridge fdb show br br0`.
type fdbLine struct {
	mac, dev string
	flags    []string
}

func (f fdbLine) has(flag string) bool {
	for _, x := range f.flags {
		if x == flag {
			return true
		}
	}
	return false
}

func showFDB(t *testing.T, ns *netlab.NS) []fdbLine {
	t.Helper()
	var out []fdbLine
	for _, line := range strings.Split(ns.MustRun(t, "bridge", "fdb", "show", "br", "br0"), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[1] != "dev" {
			continue
		}
		out = append(out, fdbLine{mac: f[0], dev: f[2], flags: f[3:]})
	}
	return out
}

func fdbFor(lines []fdbLine, mac net.HardwareAddr) []fdbLine {
	var out []fdbLine
	for _, l := range lines {
		if l.mac == mac.String() && l.has("master") {
			out = append(out, l)
		}
	}
	return out
}

func waitFDB(t *testing.T, ns *netlab.NS, mac net.HardwareAddr, dev string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, l := range fdbFor(showFDB(t, ns), mac) {
			if l.dev == dev {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("bridge never learned %s on %s: %+v", mac, dev, showFDB(t, ns))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

const testEtherType = 0x88b5 // IEEE local experimental

func ethFrame(dst, src net.HardwareAddr, payload string) []byte {
	f := make([]byte, 60)
	copy(f[0:6], dst)
	copy(f[6:12], src)
	f[12], f[13] = testEtherType>>8, testEtherType&0xff
	copy(f[14:], payload)
	return f
}

// received reports whether a frame carrying payload arrives on rx within d.
func received(t *testing.T, rx *packet.Conn, payload string, d time.Duration) bool {
	t.Helper()
	rx.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 2048)
	for {
		n, _, err := rx.ReadFrom(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		if n >= 14 && buf[12] == testEtherType>>8 && buf[13] == testEtherType&0xff && bytes.HasPrefix(buf[14:n], []byte(payload)) {
			return true
		}
	}
}

func TestE2ERepairFDB(t *testing.T) {
	l := newLab(t)
	guestMAC := net.HardwareAddr{0x52, 0x54, 0x00, 0x5a, 0x11, 0x01}
	sw0 := l.link(t, l.sw, "sw0")
	eth0 := l.link(t, l.guest, "eth0")

	var rx *packet.Conn
	if err := l.guest.Do(func() (err error) {
		rx, err = packet.Listen(&net.Interface{Index: eth0.Index}, packet.Raw, 0x0003, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	tx := send.NewPacketSender()
	defer tx.Close()
	var p *Path
	if err := inNS(t, l.host, func(h Host) (err error) {
		p, err = Resolve(h, "vif1.0", nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var changed bool
	// Nothing learned yet: nothing to repair.
	if err := l.host.Do(func() (err error) {
		changed, err = RepairFDB(context.Background(), p, guestMAC)
		return err
	}); err != nil || changed {
		t.Fatalf("repair before learning: changed=%v err=%v", changed, err)
	}

	// The guest lived behind the switch: its broadcast taught br0 that it
	// sits behind up0. The first send opens the socket in the switch
	// namespace; later sends reuse it from any thread.
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	if err := l.sw.Do(func() error { return tx.Send(sw0.Index, ethFrame(bcast, guestMAC, "learn")) }); err != nil {
		t.Fatal(err)
	}
	waitFDB(t, l.host, guestMAC, "up0")

	// While that entry stands, br0 drops the network's traffic for the guest.
	if err := tx.Send(sw0.Index, ethFrame(guestMAC, sw0.MAC, "before")); err != nil {
		t.Fatal(err)
	}
	if received(t, rx, "before", 500*time.Millisecond) {
		t.Fatal("frame for the guest reached it before the repair: the lab does not reproduce the stale entry")
	}

	// The entry learned a moment ago is found: the repair reads the
	// kernel's table, not a copy of it.
	if err := l.host.Do(func() (err error) {
		changed, err = RepairFDB(context.Background(), p, guestMAC)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !changed {
		t.Error("RepairFDB reported no change")
	}
	ents := fdbFor(showFDB(t, l.host), guestMAC)
	if len(ents) != 1 || ents[0].dev != "vif1.0" || ents[0].has("static") || ents[0].has("permanent") {
		t.Fatalf("after repair the FDB holds %+v for %s, want one dynamic entry on vif1.0", ents, guestMAC)
	}
	if err := tx.Send(sw0.Index, ethFrame(guestMAC, sw0.MAC, "after")); err != nil {
		t.Fatal(err)
	}
	if !received(t, rx, "after", 2*time.Second) {
		t.Fatal("frame for the guest did not reach it after the repair")
	}

	// Repairing again changes nothing.
	if err := l.host.Do(func() (err error) {
		changed, err = RepairFDB(context.Background(), p, guestMAC)
		return err
	}); err != nil || changed {
		t.Fatalf("second repair: changed=%v err=%v", changed, err)
	}
}

// A static entry (NUD_NOARP) is someone's: an operator's, an anti-spoofing
// setup's or an EVPN control plane's. It is refused, counted and left as it
// is, wherever it points.
func TestE2ERepairStaticEntry(t *testing.T) {
	l := newLab(t)
	m := net.HardwareAddr{0x52, 0x54, 0x00, 0x5a, 0x11, 0x03}
	l.host.MustRun(t, "bridge", "fdb", "add", m.String(), "dev", "up0", "master", "static")
	var p *Path
	if err := inNS(t, l.host, func(h Host) (err error) {
		p, err = Resolve(h, "vif1.0", nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var reasons []string
	f := &FDB{Refused: func(r string) { reasons = append(reasons, r) }}
	defer f.Close()
	before := showFDB(t, l.host)
	var changed bool
	err := l.host.Do(func() (err error) {
		changed, err = f.Repair(context.Background(), p, m)
		return err
	})
	var re *RefusedError
	if !errors.As(err, &re) || re.Reason != RefuseStatic || changed {
		t.Fatalf("repair of a static entry: changed=%v err=%v, want a static refusal", changed, err)
	}
	if !strings.Contains(err.Error(), `static entry for it on "up0"`) {
		t.Errorf("refusal %q does not name the entry's port", err)
	}
	if !reflect.DeepEqual(reasons, []string{"static"}) {
		t.Errorf("refusals counted %v, want [static]", reasons)
	}
	ents := fdbFor(showFDB(t, l.host), m)
	if len(ents) != 1 || ents[0].dev != "up0" || !ents[0].has("static") {
		t.Fatalf("FDB holds %+v for %s, want the static entry on up0 untouched", ents, m)
	}
	if after := showFDB(t, l.host); !reflect.DeepEqual(after, before) {
		t.Errorf("the repair changed the FDB:\n%+v\nwas\n%+v", after, before)
	}
}

// A MAC the bridge has learned on another live VM port belongs to that VM
// now: a guest that claims it (a spoofed first frame, a wrong --mac) must
// not take its traffic. The entry stays where it is.
func TestE2ERepairRefusesLiveVMPort(t *testing.T) {
	l := newLab(t)
	l.host.MustRun(t, "sh", "-c", "ip link add vif9.0 type veth peer name vif9p && ip link set vif9.0 master br0 && ip link set vif9.0 up && ip link set vif9p up")
	neighbour := net.HardwareAddr{0x52, 0x54, 0x00, 0x5a, 0x11, 0x09}
	vif9p := l.link(t, l.host, "vif9p")
	tx := send.NewPacketSender()
	defer tx.Close()
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	deadline := time.Now().Add(5 * time.Second)
	for {
		// The new port forwards (and learns) only once link watch has run.
		if err := l.host.Do(func() error { return tx.Send(vif9p.Index, ethFrame(bcast, neighbour, "learn")) }); err != nil {
			t.Fatal(err)
		}
		if ents := fdbFor(showFDB(t, l.host), neighbour); len(ents) == 1 && ents[0].dev == "vif9.0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bridge never learned %s on vif9.0: %+v", neighbour, showFDB(t, l.host))
		}
		time.Sleep(50 * time.Millisecond)
	}
	var p *Path
	if err := inNS(t, l.host, func(h Host) (err error) {
		p, err = Resolve(h, "vif1.0", nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var changed bool
	err := l.host.Do(func() (err error) {
		changed, err = RepairFDB(context.Background(), p, neighbour)
		return err
	})
	var re *RefusedError
	if !errors.As(err, &re) || re.Reason != RefuseVMPort || re.On != "vif9.0" || changed {
		t.Fatalf("repair of another VM's MAC: changed=%v err=%v, want a vm_port refusal naming vif9.0", changed, err)
	}
	if ents := fdbFor(showFDB(t, l.host), neighbour); len(ents) != 1 || ents[0].dev != "vif9.0" {
		t.Fatalf("FDB holds %+v for %s, want it still on vif9.0", ents, neighbour)
	}
}

func TestE2ERepairRefusesHostMAC(t *testing.T) {
	l := newLab(t)
	// A permanent entry an operator added is the host's even though no
	// interface carries the address.
	pinned := net.HardwareAddr{0x52, 0x54, 0x00, 0x5a, 0x11, 0x02}
	l.host.MustRun(t, "bridge", "fdb", "add", pinned.String(), "dev", "up0", "master", "permanent")
	var p *Path
	if err := inNS(t, l.host, func(h Host) (err error) {
		p, err = Resolve(h, "vif1.0", nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// The bridge's address is a local entry, on the bridge or on the port
	// whose address it took; lone0's is no concern of the bridge's
	// (resolve.DropHostOwned refuses it before any plan).
	brMsg := fmt.Sprintf(`MAC %s belongs to the host: it is a local entry of bridge "br0"`, p.Bridge.MAC)
	for _, tc := range []struct {
		mac net.HardwareAddr
		msg string
	}{
		{p.Bridge.MAC, brMsg},
		{pinned, `MAC 52:54:00:5a:11:02 belongs to the host: it is a local entry of bridge "br0" on port "up0"`},
	} {
		before := showFDB(t, l.host)
		var changed bool
		err := l.host.Do(func() (err error) {
			changed, err = RepairFDB(context.Background(), p, tc.mac)
			return err
		})
		if !errors.Is(err, ErrHostOwnedMAC) || err == nil || !strings.HasPrefix(err.Error(), tc.msg) || changed {
			t.Errorf("RepairFDB(%s): changed=%v err=%v, want %q", tc.mac, changed, err, tc.msg)
		}
		if after := showFDB(t, l.host); !reflect.DeepEqual(after, before) {
			t.Errorf("RepairFDB(%s) changed the FDB:\n%+v\nwas\n%+v", tc.mac, after, before)
		}
	}
}

// ipTable builds a TableHost from `ip -d -j link show` in ns: the links as
// rtnetlink reports them, which is what the daemon keeps.
func ipTable(t *testing.T, ns *netlab.NS) *TableHost {
	t.Helper()
	var links []struct {
		Index    int    `json:"ifindex"`
		Name     string `json:"ifname"`
		Address  string `json:"address"`
		Master   string `json:"master"`
		LinkInfo struct {
			Kind string `json:"info_kind"`
		} `json:"linkinfo"`
	}
	if err := json.Unmarshal([]byte(ns.MustRun(t, "ip", "-d", "-j", "link", "show")), &links); err != nil {
		t.Fatal(err)
	}
	idx := map[string]int{}
	for _, l := range links {
		idx[l.Name] = l.Index
	}
	h := &TableHost{}
	for _, l := range links {
		tl := TableLink{Link: Link{Name: l.Name, Index: l.Index}, Kind: l.LinkInfo.Kind, Master: idx[l.Master]}
		if m, err := net.ParseMAC(l.Address); err == nil && len(m) == 6 {
			tl.MAC = m
		}
		h.Links = append(h.Links, tl)
	}
	return h
}

// A TableHost over the kernel's link list resolves what the sysfs Host
// resolves.
func TestE2ETableHostMatchesSysfs(t *testing.T) {
	l := newLab(t)
	table := ipTable(t, l.host)
	type res struct {
		p   *Path
		err string
	}
	ports := []string{"vif1.0", "vif2.0", "lone0", "br0", "nosuch0"}
	var viaSysfs, viaTable []res
	err := inNS(t, l.host, func(h Host) error {
		table.Filtering = h.VLANFiltering
		table.VLANTables = NetlinkVLANTables
		for _, port := range ports {
			for _, x := range []struct {
				h   Host
				out *[]res
			}{{h, &viaSysfs}, {table, &viaTable}} {
				p, err := Resolve(x.h, port, nil)
				r := res{p: p}
				if err != nil {
					r.err = err.Error()
				}
				*x.out = append(*x.out, r)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, port := range ports {
		if !reflect.DeepEqual(viaTable[i], viaSysfs[i]) {
			t.Errorf("%s: table gives %+v, sysfs gives %+v", port, viaTable[i], viaSysfs[i])
		}
	}
	if viaTable[0].p == nil || len(viaTable[0].p.Uplinks) != 1 || viaTable[0].p.Uplinks[0].Name != "up0" {
		t.Errorf("vif1.0 via the table: %+v", viaTable[0])
	}
}

// On kernels without a single-entry FDB get (before 4.20) the repair finds
// the entry in a dump instead, with the same result.
func TestE2ERepairFDBDumpFallback(t *testing.T) {
	noFDBGet.Store(true)
	t.Cleanup(func() { noFDBGet.Store(false) })
	l := newLab(t)
	m := net.HardwareAddr{0x52, 0x54, 0x00, 0x5a, 0x11, 0x04}
	var p *Path
	if err := inNS(t, l.host, func(h Host) (err error) {
		p, err = Resolve(h, "vif1.0", nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	repair := func() (changed bool, err error) {
		err = l.host.Do(func() (err error) {
			changed, err = RepairFDB(context.Background(), p, m)
			return err
		})
		return changed, err
	}
	if changed, err := repair(); err != nil || changed {
		t.Fatalf("repair with nothing learned: changed=%v err=%v", changed, err)
	}
	l.host.MustRun(t, "bridge", "fdb", "add", m.String(), "dev", "up0", "master", "dynamic")
	if changed, err := repair(); err != nil || !changed {
		t.Fatalf("repair: changed=%v err=%v", changed, err)
	}
	ents := fdbFor(showFDB(t, l.host), m)
	if len(ents) != 1 || ents[0].dev != "vif1.0" || ents[0].has("static") {
		t.Fatalf("FDB holds %+v for %s, want one dynamic entry on vif1.0", ents, m)
	}
	if _, err := repair(); err != nil {
		t.Fatal(err)
	}
	if err := l.host.Do(func() error {
		_, err := RepairFDB(context.Background(), p, p.Bridge.MAC)
		return err
	}); !errors.Is(err, ErrHostOwnedMAC) {
		t.Errorf("bridge MAC: %v, want ErrHostOwnedMAC", err)
	}
}

// An FDB keeps its socket between repairs, never the table: an entry the
// bridge learns between two repairs is seen by the second.
func TestE2EFDBKeepsNoState(t *testing.T) {
	l := newLab(t)
	m := net.HardwareAddr{0x52, 0x54, 0x00, 0x5a, 0x11, 0x05}
	var p *Path
	if err := inNS(t, l.host, func(h Host) (err error) {
		p, err = Resolve(h, "vif1.0", nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var f FDB
	defer f.Close()
	repair := func(mac net.HardwareAddr) (changed bool, err error) {
		err = l.host.Do(func() (err error) {
			changed, err = f.Repair(context.Background(), p, mac)
			return err
		})
		return changed, err
	}
	if changed, err := repair(m); err != nil || changed {
		t.Fatalf("repair with nothing learned: changed=%v err=%v", changed, err)
	}
	if _, err := repair(p.Bridge.MAC); !errors.Is(err, ErrHostOwnedMAC) {
		t.Fatalf("bridge MAC: %v, want ErrHostOwnedMAC", err)
	}
	l.host.MustRun(t, "bridge", "fdb", "add", m.String(), "dev", "up0", "master", "dynamic")
	if changed, err := repair(m); err != nil || !changed {
		t.Fatalf("repair after learning: changed=%v err=%v", changed, err)
	}
	if ents := fdbFor(showFDB(t, l.host), m); len(ents) != 1 || ents[0].dev != "vif1.0" {
		t.Fatalf("FDB holds %+v for %s, want one entry on vif1.0", ents, m)
	}
}
