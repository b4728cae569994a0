//go:build linux

package integrations_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/announce/sniff"
	"github.com/selfannounce/selfannounce/announce/xenstore/xenstoretest"
	"github.com/selfannounce/selfannounce/internal/netlab"
)

// xenVif is one vif of a Xen domain as dom0's toolstack records it, plus
// what the guest writes about itself.
type xenVif struct {
	devid    int
	mac      string
	ip       string // dom0-written backend/vif/<domid>/<devid>/ip
	guestIPs []string
}

// xenstore serves a tree holding domain domid (VM uuid) with vifs, the way
// xl/XAPI and a guest agent fill it.
func xenstore(t *testing.T, domid int, uuid string, vifs ...xenVif) *xenstoretest.Server {
	t.Helper()
	s := xenstoretest.New(t)
	w := func(p, v string) {
		t.Helper()
		if err := s.Write(p, v); err != nil {
			t.Fatalf("xenstore write %s: %v", p, err)
		}
	}
	w("/local/domain/0/name", "Domain-0")
	w("/local/domain/0/vm", "/vm/00000000-0000-0000-0000-000000000000")
	dom := fmt.Sprintf("/local/domain/%d", domid)
	w(dom+"/vm", "/vm/"+uuid)
	w(dom+"/name", fmt.Sprintf("guest%d", domid))
	w("/vm/"+uuid+"/uuid", uuid)
	for _, v := range vifs {
		be := fmt.Sprintf("/local/domain/0/backend/vif/%d/%d/", domid, v.devid)
		w(be+"frontend", fmt.Sprintf("%s/device/vif/%d", dom, v.devid))
		w(be+"frontend-id", fmt.Sprint(domid))
		w(be+"mac", v.mac)
		w(be+"bridge", "br0")
		w(be+"handle", fmt.Sprint(v.devid))
		w(be+"state", "4")
		w(be+"type", "vif")
		if v.ip != "" {
			w(be+"ip", v.ip)
		}
		w(fmt.Sprintf("%s/device/vif/%d/mac", dom, v.devid), v.mac)
		for i, ip := range v.guestIPs {
			fam := "ipv4"
			if strings.Contains(ip, ":") {
				fam = "ipv6"
			}
			w(fmt.Sprintf("%s/attr/vif/%d/%s/%d", dom, v.devid, fam, i), ip)
		}
	}
	return s
}

const (
	uuid7   = "9a3c2b1d-7e6f-4a5b-8c9d-0e1f2a3b4c5d"
	mac7    = "00:16:3e:07:00:01"
	ip7v4   = "10.7.0.5"
	ip7v6   = "2001:db8:7::5"
	guest7  = "10.66.7.9" // written by the guest: untrusted
	guest7b = "2001:db8:66::9"
)

var vif7 = xenVif{devid: 0, mac: mac7, ip: ip7v4 + " " + ip7v6, guestIPs: []string{guest7, guest7b}}

// checkDom0Burst asserts one whole burst for mac7 with exactly the
// dom0-written addresses: 5 rounds of RARP, GARP and NA, nothing for what
// the guest wrote about itself.
func checkDom0Burst(t *testing.T, ss []seen, guestIPsToo bool) {
	t.Helper()
	want := map[string]int{"rarp": 5, "garp " + ip7v4: 5, "na " + ip7v6: 5}
	got := map[string]int{"rarp": count(ss, sniff.RARP, ""), "garp " + ip7v4: count(ss, sniff.GARPRequest, ip7v4), "na " + ip7v6: count(ss, sniff.UnsolicitedNA, ip7v6)}
	guest := count(ss, sniff.GARPRequest, guest7) + count(ss, sniff.UnsolicitedNA, guest7b)
	for k, n := range want {
		if got[k] != n {
			t.Errorf("%s: %d frames on the switch, want %d (one burst of 5 rounds)", k, got[k], n)
		}
	}
	switch {
	case !guestIPsToo && guest != 0:
		t.Errorf("the guest-written addresses %s, %s were announced %d times; only dom0's may be", guest7, guest7b, guest)
	case guestIPsToo && (count(ss, sniff.GARPRequest, guest7) != 5 || count(ss, sniff.UnsolicitedNA, guest7b) != 5):
		t.Errorf("with trust-guest-ips the guest-written addresses must be announced once per round")
	}
	if len(ss) != 15 && !guestIPsToo || len(ss) != 25 && guestIPsToo {
		t.Errorf("%d announcements for %s in all", len(ss), mac7)
	}
	if t.Failed() {
		t.Logf("switch saw:%s", describe(ss))
	}
}

// TestXenSelectors announces a Xen domain by --domid and by --vm-uuid: the
// domain is found through xenstore, and its guest announced with dom0's MAC
// and addresses, once, although it has both a PV vif and an emulated tap.
func TestXenSelectors(t *testing.T) {
	h := newHost(t, "xsel")
	g := netlab.TestNS(t, "xselg")
	h.addVif(t, g, "vif7.0", "eth0")
	g.MustRun(t, "ip", "link", "set", "eth0", "up")
	h.addTap(t, "tap7.0")
	xs := xenstore(t, 7, uuid7, vif7)
	plain := writeConfig(t, "{}\n")
	trusting := writeConfig(t, "trust-guest-ips: true\n")

	for _, tc := range []struct {
		name    string
		args    []string
		trusted bool
	}{
		{"domid", []string{"--domid", "7"}, false},
		{"vm-uuid", []string{"--vm-uuid", uuid7}, false},
		{"vm-uuid-uppercase", []string{"--vm-uuid", strings.ToUpper(uuid7)}, false},
		{"trust-guest-ips", []string{"--domid", "7", "--config", trusting}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cap := startCapture(t, h.sw, "swp")
			args := append([]string{"--xenstore", xs.Path}, tc.args...)
			if !tc.trusted {
				args = append(args, "--config", plain)
			}
			r := runAnnounce(t, h.ns, args...)
			if r.Code != 0 {
				t.Fatalf("exit %d, want 0:\n%s", r.Code, r.Output)
			}
			checkDom0Burst(t, cap.announcements(mac7), tc.trusted)
			ann := records(r, "announcing")
			if len(ann) != 1 || ann[0]["port"] != "vif7.0" || ann[0]["source"] != "xenstore" {
				t.Errorf("announcing records %v, want one for vif7.0 from xenstore", ann)
			}
		})
	}
}

// TestXenWaitReadyCarrier: the vif gains carrier (netfront connects) a
// second after the command starts; nothing may leave before that.
func TestXenWaitReadyCarrier(t *testing.T) {
	h := newHost(t, "xwc")
	g := netlab.TestNS(t, "xwcg")
	h.addVif(t, g, "vif7.0", "eth0")
	xs := xenstore(t, 7, uuid7, vif7)
	cfg := writeConfig(t, "{}\n")
	cap := startCapture(t, h.sw, "swp")

	p := startAnnounce(t, h.ns, "--domid", "7", "--xenstore", xs.Path, "--config", cfg, "--wait-ready=10s")
	start := p.Start
	time.Sleep(time.Second)
	if n := len(cap.announcements(mac7)); n != 0 {
		t.Fatalf("%d announcements before the vif had carrier:%s", n, describe(cap.announcements(mac7)))
	}
	carrier := time.Now()
	g.MustRun(t, "ip", "link", "set", "eth0", "up")
	r := waitAnnounce(t, p)
	if r.Code != 0 {
		t.Fatalf("exit %d, want 0:\n%s", r.Code, r.Output)
	}
	ss := cap.announcements(mac7)
	checkDom0Burst(t, ss, false)
	if len(ss) > 0 {
		if ss[0].at.Before(carrier) {
			t.Errorf("first frame at %s, before carrier at %s", ss[0].at.Format("15:04:05.000"), carrier.Format("15:04:05.000"))
		}
		t.Logf("carrier at +%v, first frame %v later", carrier.Sub(start).Round(time.Millisecond), ss[0].at.Sub(carrier).Round(time.Millisecond))
	}
	if rd := records(r, "port ready"); len(rd) != 1 || rd[0]["port"] != "vif7.0" {
		t.Errorf("port ready records %v, want one for vif7.0", rd)
	}
}

// TestXenWaitReadyNeverReady: a port that never gets carrier is not
// announced; the command reports it after the bound.
func TestXenWaitReadyNeverReady(t *testing.T) {
	const mac8a, mac8b = "00:16:3e:08:00:01", "00:16:3e:08:00:02"
	h := newHost(t, "xnr")
	g := netlab.TestNS(t, "xnrg")
	h.addVif(t, g, "vif8.0", "eth0")
	h.addVif(t, g, "vif8.1", "eth1")
	h.addVif(t, g, "vif9.0", "eth2")
	g.MustRun(t, "ip", "link", "set", "eth0", "up") // vif8.1 and vif9.0 stay without carrier
	cfg := writeConfig(t, "{}\n")

	t.Run("multi-port", func(t *testing.T) {
		xs := xenstore(t, 8, "8a8a8a8a-0000-4000-8000-000000000008",
			xenVif{devid: 0, mac: mac8a, ip: "10.8.0.1"}, xenVif{devid: 1, mac: mac8b, ip: "10.8.1.1"})
		cap := startCapture(t, h.sw, "swp")
		r := runAnnounce(t, h.ns, "--domid", "8", "--xenstore", xs.Path, "--config", cfg, "--wait-ready=2s")
		expectError(t, r, 5, "1 of 2 ports not announced: vif8.1")
		if r.Took < 2*time.Second {
			t.Errorf("gave up after %v, before the 2 s bound", r.Took)
		}
		if ss := cap.announcements(mac8b); len(ss) != 0 {
			t.Errorf("frames for the port that never got ready:%s", describe(ss))
		}
		if ss := cap.announcements(mac8a); count(ss, sniff.RARP, "") != 5 || count(ss, sniff.GARPRequest, "10.8.0.1") != 5 {
			t.Errorf("the ready port was not announced in full:%s", describe(ss))
		}
		nr := records(r, "port not ready, not announced")
		if len(nr) != 1 || nr[0]["port"] != "vif8.1" {
			t.Errorf("not-ready records %v, want one for vif8.1", nr)
		}
	})
	t.Run("single-port", func(t *testing.T) {
		const mac9 = "00:16:3e:09:00:01"
		xs := xenstore(t, 9, "9a9a9a9a-0000-4000-8000-000000000009", xenVif{devid: 0, mac: mac9, ip: "10.9.0.1"})
		cap := startCapture(t, h.sw, "swp")
		r := runAnnounce(t, h.ns, "--domid", "9", "--xenstore", xs.Path, "--config", cfg, "--wait-ready=1s")
		expectError(t, r, 1, "vif9.0")
		if r.Took < time.Second {
			t.Errorf("gave up after %v, before the 1 s bound", r.Took)
		}
		if ss := cap.announcements(mac9); len(ss) != 0 {
			t.Errorf("frames for the port that never got ready:%s", describe(ss))
		}
	})
}

// TestXenWaitReadyHVMOnePort: an HVM guest has a PV vif and an emulated
// tap (XenServer's tapD.N, xl's vifD.N-emu), and only the one it uses comes
// alive. Without PV drivers that is the tap: on XenServer carrier, then the
// guest's first frame; with xl carrier, then the domain's start (xl renames
// NAME--incoming to NAME right before unpausing it; a silent guest sends no
// frame). With PV drivers it is the vif (carrier) while QEMU holds the tap
// open but the guest never speaks through it. Either way the guest is
// announced once, through the live port. The real xl path runs in e2e/xen.
func TestXenWaitReadyHVMOnePort(t *testing.T) {
	for _, tc := range []struct {
		name, tap string
		pv        bool
	}{
		{"tap-xenserver", "tap7.0", false},
		{"tap-xl", "vif7.0-emu", false},
		{"pv-vif", "tap7.0", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHost(t, "xhvm")
			g := netlab.TestNS(t, "xhvmg")
			h.addVif(t, g, "vif7.0", "eth0")
			h.addTap(t, tc.tap)
			xs := xenstore(t, 7, uuid7, vif7)
			xl := strings.HasSuffix(tc.tap, "-emu")
			if xl {
				xs.Write("/local/domain/7/name", "guest7--incoming")
			}
			cfg := writeConfig(t, "{}\n")
			cap := startCapture(t, h.sw, "swp")

			p := startAnnounce(t, h.ns, "--domid", "7", "--xenstore", xs.Path, "--config", cfg, "--wait-ready=10s")
			time.Sleep(500 * time.Millisecond)
			// QEMU opens the tap in both cases; carrier alone is no arrival
			// on a tap, QEMU holds it long before the guest runs.
			fd := h.openTap(t, tc.tap)
			time.Sleep(700 * time.Millisecond)
			if ss := cap.announcements(mac7); len(ss) != 0 {
				t.Fatalf("announced on tap carrier alone, before the guest spoke:%s", describe(ss))
			}
			alive := time.Now()
			want := tc.tap
			switch {
			case tc.pv:
				want = "vif7.0"
				g.MustRun(t, "ip", "link", "set", "eth0", "up")
			case xl:
				xs.Write("/local/domain/7/name", "guest7")
			default:
				if _, err := writeFD(fd, guestFrame(mustMAC(t, mac7))); err != nil {
					t.Fatal(err)
				}
			}
			r := waitAnnounce(t, p)
			if r.Code != 0 {
				t.Fatalf("exit %d, want 0:\n%s", r.Code, r.Output)
			}
			ss := cap.announcements(mac7)
			checkDom0Burst(t, ss, false)
			if len(ss) > 0 && ss[0].at.Before(alive) {
				t.Errorf("first frame before %s came alive", want)
			}
			ann := records(r, "announcing")
			if len(ann) != 1 || ann[0]["port"] != want {
				t.Errorf("announcing records %v, want exactly one, through %s", ann, want)
			}
		})
	}
}

// TestXenBadInput: selectors naming nothing, or unreachable xenstore, end
// with a one-line error and the documented status, and send nothing.
func TestXenBadInput(t *testing.T) {
	h := newHost(t, "xbad")
	g := netlab.TestNS(t, "xbadg")
	h.addVif(t, g, "vif7.0", "eth0")
	g.MustRun(t, "ip", "link", "set", "eth0", "up")
	xs := xenstore(t, 7, uuid7, vif7)
	cfg := writeConfig(t, "{}\n")
	cap := startCapture(t, h.sw, "swp")

	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		substr string
	}{
		{"unknown-domid", []string{"--domid", "42", "--xenstore", xs.Path}, 3, "42"},
		{"unknown-uuid", []string{"--vm-uuid", "0badc0de-0000-4000-8000-000000000000", "--xenstore", xs.Path}, 3, "0badc0de-0000-4000-8000-000000000000"},
		{"no-xenstore", []string{"--domid", "7", "--xenstore", "/nonexistent/xenstored/socket"}, 4, "/nonexistent/xenstored/socket"},
		{"no-xenstore-uuid", []string{"--vm-uuid", uuid7, "--xenstore", "/nonexistent/xenstored/socket"}, 4, "/nonexistent/xenstored/socket"},
		{"malformed-domid", []string{"--domid", "seven", "--xenstore", xs.Path}, 2, "seven"},
		{"negative-domid", []string{"--domid", "-7", "--xenstore", xs.Path}, 2, "-7"},
		{"dom0", []string{"--domid", "0", "--xenstore", xs.Path}, 2, "domid 0"},
		{"malformed-uuid", []string{"--vm-uuid", "not-a-uuid", "--xenstore", xs.Path}, 2, "not-a-uuid"},
		{"malformed-uuid-unreachable", []string{"--vm-uuid", "not-a-uuid", "--xenstore", "/nonexistent/xenstored/socket"}, 2, "not-a-uuid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runAnnounce(t, h.ns, append(tc.args, "--config", cfg)...)
			expectError(t, r, tc.code, tc.substr)
		})
	}
	time.Sleep(200 * time.Millisecond)
	if ss := cap.anyAnnouncements(); len(ss) != 0 {
		t.Errorf("bad input put frames on the wire:%s", describe(ss))
	}
}
