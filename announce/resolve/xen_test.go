package resolve_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/selfannounce/selfannounce/announce/resolve"
	"github.com/selfannounce/selfannounce/announce/xenstore"
	"github.com/selfannounce/selfannounce/announce/xenstore/xenstoretest"
)

const uuid3 = "5b9c1f6e-3a1d-4c2b-9e8f-7a6b5c4d3e2f"

// xenHost fills a xenstore tree the way xl/XAPI and a guest agent do.
func xenHost(t *testing.T) (*xenstoretest.Server, *xenstore.Client) {
	t.Helper()
	s := xenstoretest.New(t)
	w := func(p, v string) {
		if err := s.Write(p, v); err != nil {
			t.Fatal(err)
		}
	}
	w("/local/domain/0/name", "Domain-0")
	w("/local/domain/0/vm", "/vm/00000000-0000-0000-0000-000000000000")
	// domid 3: two vifs, the second with a MAC Xen would never give a guest.
	w("/local/domain/3/vm", "/vm/"+uuid3)
	w("/local/domain/3/name", "web")
	be := "/local/domain/0/backend/vif/3/0/"
	w(be+"frontend", "/local/domain/3/device/vif/0")
	w(be+"mac", "00:16:3e:5a:01:02")
	w(be+"bridge", "xenbr0")
	w(be+"handle", "0")
	w(be+"state", "4")
	w(be+"ip", "10.0.3.7 10.0.3.8/24 junk 2001:db8:3::7 127.0.0.1 10.0.3.7")
	w("/local/domain/0/backend/vif/3/1/mac", "fe:ff:ff:ff:ff:ff")
	// What the guest writes about itself.
	w("/local/domain/3/attr/vif/0/ipv4/0", "10.66.0.1")
	w("/local/domain/3/attr/vif/0/ipv4/1", "not an address")
	w("/local/domain/3/attr/vif/0/ipv4/2", "10.0.3.7")
	w("/local/domain/3/attr/vif/0/ipv6/0", "2001:db8:66::1")
	w("/local/domain/3/attr/vif/0/ipv6/1", "ff02::1")
	// domid 4: no vifs; domid 5 found by a suffixed vm path; domid 6 by a
	// uuid key beside vm.
	w("/local/domain/4/vm", "/vm/11111111-1111-1111-1111-111111111111")
	w("/local/domain/5/vm", "/vm/22222222-2222-2222-2222-222222222222-1")
	w("/vm/22222222-2222-2222-2222-222222222222-1/uuid", "22222222-2222-2222-2222-222222222222")
	w("/local/domain/6/vm", "/vm/whatever")
	w("/local/domain/6/uuid", "33333333-3333-3333-3333-333333333333")
	c, err := xenstore.Dial(s.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return s, c
}

func TestParseXenPort(t *testing.T) {
	for name, want := range map[string]string{
		"vif3.0":      "3 0 true",
		"vif12.3-emu": "12 3 true",
		"tap7.1":      "7 1 true",
		"vif0.0":      "0 0 false", // dom0's own
		"vif3":        "0 0 false",
		"vif3.0.1":    "0 0 false",
		"vif03.0":     "0 0 false",
		"vif-3.0":     "0 0 false",
		"vif3.0-emux": "0 0 false",
		"tap3.0-emu":  "0 0 false",
		"vnet3":       "0 0 false",
		"vif32752.0":  "0 0 false", // DOMID_FIRST_RESERVED
		"vif32751.0":  "32751 0 true",
	} {
		d, n, ok := resolve.ParseXenPort(name)
		if got := fmt.Sprint(d, n, ok); got != want {
			t.Errorf("ParseXenPort(%q) = %s, want %s", name, got, want)
		}
	}
}

func TestXenstoreResolver(t *testing.T) {
	s, c := xenHost(t)
	ctx := ctxT(t)
	r := resolve.Xenstore(c, false)
	if r.Name() != "xenstore" {
		t.Fatal(r.Name())
	}
	for _, port := range []string{"vif3.0", "vif3.0-emu", "tap3.0"} {
		g, known, err := r.Resolve(ctx, port)
		if err != nil || !known {
			t.Fatalf("%s: known=%v err=%v", port, known, err)
		}
		if g.MAC.String() != "00:16:3e:5a:01:02" || g.Source != "xenstore" {
			t.Fatalf("%s: %v", port, g)
		}
		// dom0's list, junk, loopback and duplicates dropped, prefixes
		// accepted; nothing the guest wrote.
		if got := ipsString(g.IPs); got != "[10.0.3.7 10.0.3.8 2001:db8:3::7]" {
			t.Fatalf("%s: IPs %s", port, got)
		}
	}
	for _, port := range []string{"vif3.2", "vif9.0", "eth0", "vif0.0"} {
		if g, known, err := r.Resolve(ctx, port); known || err != nil {
			t.Fatalf("%s: %v known=%v err=%v", port, g, known, err)
		}
	}
	if _, known, err := r.Resolve(ctx, "vif3.1"); known || err == nil || !strings.Contains(err.Error(), "Xen's vif MAC") {
		t.Fatalf("vif3.1 with fe:ff:ff:ff:ff:ff: known=%v err=%v", known, err)
	}
	// No ip key at all: a MAC alone is a guest.
	s.Remove("/local/domain/0/backend/vif/3/0/ip")
	if g, known, err := r.Resolve(ctx, "vif3.0"); err != nil || !known || len(g.IPs) != 0 {
		t.Fatalf("without ip: %v %v %v", g, known, err)
	}
	c.Close()
	if _, known, err := r.Resolve(ctx, "vif3.0"); known || err == nil {
		t.Fatalf("closed connection: known=%v err=%v", known, err)
	}
}

// Guests are untrusted: what a guest writes under attr/ is used only when
// the operator opted in.
func TestXenstoreTrustGuestIPs(t *testing.T) {
	s, c := xenHost(t)
	ctx := ctxT(t)
	g, _, err := resolve.Xenstore(c, false).Resolve(ctx, "vif3.0")
	if err != nil {
		t.Fatal(err)
	}
	for _, ip := range g.IPs {
		if ip.String() == "10.66.0.1" || ip.String() == "2001:db8:66::1" {
			t.Fatalf("guest-written %s used without trust", ip)
		}
	}
	g, known, err := resolve.Xenstore(c, true).Resolve(ctx, "vif3.0")
	if err != nil || !known {
		t.Fatal(known, err)
	}
	if got := ipsString(g.IPs); got != "[10.0.3.7 10.0.3.8 2001:db8:3::7 10.66.0.1 2001:db8:66::1]" {
		t.Fatalf("trusted IPs %s", got)
	}
	// The guest cannot make the resolver fail or overflow: a flood of
	// entries is cut off, junk is skipped.
	for i := 0; i < 100; i++ {
		s.Write(fmt.Sprintf("/local/domain/3/attr/vif/0/ipv4/%d", i), fmt.Sprintf("10.77.%d.1", i))
	}
	s.Write("/local/domain/3/attr/vif/0/ipv4/x", "10.88.0.1")
	g, known, err = resolve.Xenstore(c, true).Resolve(ctx, "vif3.0")
	if err != nil || !known {
		t.Fatal(known, err)
	}
	if len(g.IPs) > 3+32+1 {
		t.Fatalf("guest made us take %d addresses", len(g.IPs))
	}
	if strings.Contains(ipsString(g.IPs), "10.88.0.1") {
		t.Fatal("non-numeric attr key read")
	}
	// No attr tree at all is fine.
	s.Remove("/local/domain/3/attr")
	if _, known, err := resolve.Xenstore(c, true).Resolve(ctx, "vif3.0"); err != nil || !known {
		t.Fatal(known, err)
	}
}

func TestXenDomainPorts(t *testing.T) {
	_, c := xenHost(t)
	ctx := ctxT(t)
	vifs, err := resolve.XenDomainPorts(ctx, c, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(vifs) != 1 {
		t.Fatalf("got %d vifs, want 1 (vif 1's MAC is Xen's)", len(vifs))
	}
	v := vifs[0]
	if v.Domid != 3 || v.Devid != 0 || v.MAC.String() != "00:16:3e:5a:01:02" ||
		ipsString(v.IPs) != "[10.0.3.7 10.0.3.8 2001:db8:3::7]" ||
		fmt.Sprint(v.Ports) != "[vif3.0 vif3.0-emu tap3.0]" {
		t.Fatalf("vif %+v", v)
	}
	if vifs, err := resolve.XenDomainPorts(ctx, c, 4); err != nil || len(vifs) != 0 {
		t.Fatalf("domain 4: %v %v", vifs, err)
	}
	if _, err := resolve.XenDomainPorts(ctx, c, 42); !errors.Is(err, resolve.ErrUnknownDomain) {
		t.Fatalf("domain 42: %v", err)
	}
	if _, err := resolve.XenDomainPorts(ctx, c, 0); err == nil {
		t.Fatal("domain 0 accepted")
	}
}

func TestXenDomidByUUID(t *testing.T) {
	_, c := xenHost(t)
	ctx := ctxT(t)
	for uuid, want := range map[string]int{
		uuid3:                                  3,
		strings.ToUpper(uuid3):                 3,
		"22222222-2222-2222-2222-222222222222": 5,
		"33333333-3333-3333-3333-333333333333": 6,
	} {
		if d, err := resolve.XenDomidByUUID(ctx, c, uuid); err != nil || d != want {
			t.Errorf("%s: %d, %v; want %d", uuid, d, err, want)
		}
	}
	if _, err := resolve.XenDomidByUUID(ctx, c, "44444444-4444-4444-4444-444444444444"); !errors.Is(err, resolve.ErrUnknownDomain) {
		t.Fatalf("unknown uuid: %v", err)
	}
	if _, err := resolve.XenDomidByUUID(ctx, c, "00000000-0000-0000-0000-000000000000"); !errors.Is(err, resolve.ErrUnknownDomain) {
		t.Fatalf("dom0's uuid must not resolve: %v", err)
	}
	if _, err := resolve.XenDomidByUUID(ctx, c, "web"); err == nil || !strings.Contains(err.Error(), "malformed") {
		t.Fatalf("malformed uuid: %v", err)
	}
}
