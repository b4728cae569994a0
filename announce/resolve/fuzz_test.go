package resolve

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/selfannounce/selfannounce/announce/xenstore"
)

// FuzzLibvirtXML feeds libvirt status and domain XML to the resolver's
// parser. Seeds: the status files in testdata/libvirt, and in
// testdata/fuzz/FuzzLibvirtXML live XML a real libvirtd wrote on this
// machine. Nothing may panic, and every interface it returns carries a
// usable MAC and only valid addresses.
func FuzzLibvirtXML(f *testing.F) {
	files, _ := filepath.Glob("testdata/libvirt/*.xml")
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("<domain><name>x</name><devices><interface><mac address='52:54:00:00:00:01'/><target dev='vnet0'/><ip address='192.0.2.1'/></interface></devices></domain>"))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := parseLibvirtXML(b)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		for _, ifc := range d.ifaces {
			if len(ifc.MAC) != 6 {
				t.Fatalf("interface %q with MAC %v", ifc.Dev, ifc.MAC)
			}
			for _, ip := range ifc.IPs {
				if !ip.IsValid() {
					t.Fatalf("interface %q with invalid address", ifc.Dev)
				}
			}
		}
	})
}

// xsValues is xenstore as a map: path to value, and directory listings.
type xsValues struct {
	vals map[string]string
	dirs map[string][]string
}

func (x xsValues) Read(_ context.Context, p string) (string, error) {
	if v, ok := x.vals[p]; ok {
		return v, nil
	}
	return "", &xenstore.Error{Op: "READ", Path: p, Errno: "ENOENT"}
}

func (x xsValues) Directory(_ context.Context, p string) ([]string, error) {
	if v, ok := x.dirs[p]; ok {
		return v, nil
	}
	return nil, &xenstore.Error{Op: "DIRECTORY", Path: p, Errno: "ENOENT"}
}

// FuzzXenstoreValues resolves vif3.0 from arbitrary xenstore values: the
// dom0-written backend mac and ip keys, and the guest-written attr/vif
// listing and values. Nothing may panic; without trust in the guest, no
// address the guest wrote may come out, and with it at most maxGuestIPs
// more than dom0 recorded.
func FuzzXenstoreValues(f *testing.F) {
	f.Add("00:16:3e:5e:6c:01", "192.0.2.10 2001:db8::10", "0\x001\x00", "192.0.2.11", "fe80::1")
	f.Add("00:16:3e:5e:6c:01\n", "", "2\x000\x00x\x00", "192.0.2.10/24", "2001:db8::2")
	f.Add("fe:ff:ff:ff:ff:ff", "0.0.0.0", "", "", "")
	f.Add("ff:ff:ff:ff:ff:ff", "224.0.0.1 ::", "00\x00-1\x00", "255.255.255.255", "ff02::1")
	f.Fuzz(func(t *testing.T, mac, ip, names, v0, v1 string) {
		const be, fe = "/local/domain/0/backend/vif/3/0", "/local/domain/3/attr/vif/0"
		x := xsValues{
			vals: map[string]string{be + "/mac": mac, be + "/ip": ip},
			dirs: map[string][]string{},
		}
		listing := strings.Split(names, "\x00")
		for _, fam := range []string{"/ipv4", "/ipv6"} {
			x.dirs[fe+fam] = listing
			for i, n := range listing {
				x.vals[fe+fam+"/"+n] = []string{v0, v1}[i%2]
			}
		}
		dom0 := parseAddrList(ip, nil)
		for _, trust := range []bool{false, true} {
			g, ok, err := Xenstore(x, trust).Resolve(context.Background(), "vif3.0")
			if err != nil || !ok {
				continue
			}
			if len(g.MAC) != 6 {
				t.Fatalf("resolved MAC %v", g.MAC)
			}
			extra := 0
			for _, a := range g.IPs {
				if !slices.Contains(dom0, a) {
					extra++
				}
			}
			if !trust && extra > 0 {
				t.Fatalf("untrusted guest values %q %q gave addresses %v beyond dom0's %v", v0, v1, g.IPs, dom0)
			}
			if extra > 2*maxGuestIPs {
				t.Fatalf("%d guest addresses", extra)
			}
		}
	})
}
