package resolve_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/resolve"
	"github.com/selfannounce/selfannounce/announce/xenstore"
	"github.com/selfannounce/selfannounce/announce/xenstore/xenstoretest"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mac(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func ips(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func ipsString(a []netip.Addr) string { return fmt.Sprint(a) }

func TestStatic(t *testing.T) {
	r := resolve.Static([]resolve.StaticEntry{
		{Port: "vnet7", MAC: mac(t, "52:54:00:00:00:07"), IPs: ips("192.0.2.7", "::ffff:192.0.2.8", "127.0.0.1", "192.0.2.7")},
		{Port: "vif*", MAC: mac(t, "00:16:3e:00:00:01")},
		{Port: "vif9.0", MAC: mac(t, "00:16:3e:00:00:09")}, // shadowed by vif*
		{Port: "bad[", MAC: mac(t, "00:16:3e:00:00:0a")},
		{Port: "xenmac", MAC: announce.XenVifMAC},
	})
	ctx := ctxT(t)
	if r.Name() != "config" {
		t.Fatalf("name %q", r.Name())
	}
	g, known, err := r.Resolve(ctx, "vnet7")
	if err != nil || !known || g.MAC.String() != "52:54:00:00:00:07" || g.Source != "config" {
		t.Fatalf("vnet7: %v %v %v", g, known, err)
	}
	// Mapped v4 is unmapped, loopback and duplicates dropped.
	if got := ipsString(g.IPs); got != "[192.0.2.7 192.0.2.8]" {
		t.Fatalf("vnet7 IPs %s", got)
	}
	if g, known, _ := r.Resolve(ctx, "vif9.0"); !known || g.MAC.String() != "00:16:3e:00:00:01" {
		t.Fatalf("vif9.0: first matching entry must win, got %v", g)
	}
	if _, known, err := r.Resolve(ctx, "eth0"); known || err == nil || !strings.Contains(err.Error(), "bad[") {
		t.Fatalf("eth0 reached a malformed pattern: known=%v err=%v", known, err)
	}
	if _, known, err := r.Resolve(ctx, "xenmac"); known || err == nil {
		t.Fatalf("Xen's vif MAC accepted: known=%v err=%v", known, err)
	}
}

func TestChainOrder(t *testing.T) {
	ctx := ctxT(t)
	// A xenstore resolver whose connection is gone, as on a host where
	// xenstored stopped: it fails, and the chain carries on.
	srv := xenstoretest.New(t)
	c, err := xenstore.Dial(srv.Path)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	xen := resolve.Xenstore(c, false)
	lv := resolve.Libvirt(copyTestdata(t))
	cfg := resolve.Static([]resolve.StaticEntry{
		{Port: "vnet3", MAC: mac(t, "52:54:00:99:99:99")},
		{Port: "vif*", MAC: mac(t, "00:16:3e:00:00:01")},
	})

	g, known, err := resolve.Chain{xen, lv, cfg}.Resolve(ctx, "vnet3")
	if err != nil || !known || g.Source != "libvirt" || g.MAC.String() != "52:54:00:6b:3c:58" {
		t.Fatalf("libvirt before config: %v %v %v", g, known, err)
	}
	g, known, err = resolve.Chain{cfg, xen, lv}.Resolve(ctx, "vnet3")
	if err != nil || !known || g.Source != "config" || g.MAC.String() != "52:54:00:99:99:99" {
		t.Fatalf("config before libvirt: %v %v %v", g, known, err)
	}
	// xenstore fails for a Xen port name; config still answers.
	g, known, err = resolve.Chain{xen, lv, cfg}.Resolve(ctx, "vif3.0")
	if err != nil || !known || g.Source != "config" {
		t.Fatalf("vif3.0 past a failed xenstore: %v %v %v", g, known, err)
	}
	// Nobody knows: the failure is reported, named by resolver.
	_, known, err = resolve.Chain{xen, lv}.Resolve(ctx, "vif3.0")
	if known || err == nil || !strings.HasPrefix(err.Error(), "xenstore: ") {
		t.Fatalf("unknown port: known=%v err=%v", known, err)
	}
	_, known, err = resolve.Chain{lv, cfg}.Resolve(ctx, "eth0")
	if known || err != nil {
		t.Fatalf("unknown port without failures: known=%v err=%v", known, err)
	}
}

type fixedHost struct {
	macs []net.HardwareAddr
	ips  []netip.Addr
}

func (f fixedHost) Owned(context.Context) ([]net.HardwareAddr, []netip.Addr, error) {
	return f.macs, f.ips, nil
}

func TestDropHostOwned(t *testing.T) {
	hostMACs := []net.HardwareAddr{mac(t, "02:00:00:00:00:01")}
	hostIPs := ips("192.0.2.1", "2001:db8::1", "fe80::1%eth0")
	g := announce.Guest{MAC: mac(t, "52:54:00:00:00:07"), IPs: ips("192.0.2.1", "192.0.2.7", "::ffff:192.0.2.1", "2001:db8::1", "2001:db8::7", "fe80::1"), Source: "libvirt"}
	out, err := resolve.DropHostOwned(g, hostMACs, hostIPs)
	if err != nil {
		t.Fatal(err)
	}
	if got := ipsString(out.IPs); got != "[192.0.2.7 2001:db8::7]" {
		t.Fatalf("kept %s", got)
	}
	if len(g.IPs) != 6 || out.Source != "libvirt" {
		t.Fatal("input guest modified or source lost")
	}
	g.MAC = mac(t, "02:00:00:00:00:01")
	if _, err := resolve.DropHostOwned(g, hostMACs, hostIPs); err == nil || !strings.Contains(err.Error(), "owned by this host") {
		t.Fatalf("host MAC accepted: %v", err)
	}

	// The same rule wrapped around a resolver.
	cfg := resolve.Static([]resolve.StaticEntry{
		{Port: "a", MAC: mac(t, "52:54:00:00:00:0a"), IPs: ips("192.0.2.1", "192.0.2.10")},
		{Port: "b", MAC: mac(t, "02:00:00:00:00:01"), IPs: ips("192.0.2.11")},
	})
	f := resolve.HostFiltered(cfg, fixedHost{hostMACs, hostIPs})
	if g, known, err := f.Resolve(ctxT(t), "a"); err != nil || !known || ipsString(g.IPs) != "[192.0.2.10]" {
		t.Fatalf("filtered a: %v %v %v", g, known, err)
	}
	if _, known, err := f.Resolve(ctxT(t), "b"); known || err == nil {
		t.Fatalf("filtered b: known=%v err=%v", known, err)
	}
}
