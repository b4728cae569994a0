//go:build linux

package daemon_test

import (
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/internal/proctest"
)

// reloadConfig is a guest whose address changes between configs. The flap
// guard is off so one MAC can arrive on several vifs in quick succession.
func reloadConfig(ip string) string {
	return "flap: {holddown: 0s}\nguests:\n" + guestYAML("vif6*", macN(6), ip)
}

// arriveGARPs brings vif's guest up and returns the GARP addresses of the
// burst that follows, once it has finished.
func arriveGARPs(t *testing.T, h *host, d *daemonProc, vif, peer string) []netip.Addr {
	t.Helper()
	h.addVif(vif, peer)
	up := time.Now()
	h.setGuest(peer, true)
	if _, ok := d.waitLog(3*time.Second, func(l proctest.Log) bool { return l.Msg == "burst" && l.Str("port") == vif }); !ok {
		t.Fatalf("%s: no burst within 3 s of carrier", vif)
	}
	var ips []netip.Addr
	seen := map[netip.Addr]bool{}
	for _, f := range h.wire.all(func(f frame) bool { return f.Kind == kindGARP && f.At.After(up) }) {
		if !seen[f.IP] {
			seen[f.IP] = true
			ips = append(ips, f.IP)
		}
	}
	return ips
}

// SIGHUP with a broken file keeps the old config in force; a good file then
// replaces it, and the next burst's GARPs carry the new address.
func TestReloadBadThenGoodConfig(t *testing.T) {
	bin := requireE2E(t)
	h := newHost(t)
	cfg := writeConfig(t, reloadConfig("10.0.0.61"))
	d := startDaemon(t, bin, h.ns, cfg)
	old, updated := netip.MustParseAddr("10.0.0.61"), netip.MustParseAddr("10.0.0.62")

	if ips := arriveGARPs(t, h, d, "vif60.0", "g60"); len(ips) != 1 || ips[0] != old {
		t.Fatalf("first arrival: GARPs for %v, want [%v]", ips, old)
	}

	if err := os.WriteFile(cfg, []byte("guests:\n  - port: [unclosed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d.signal(syscall.SIGHUP)
	l, ok := d.waitLog(3*time.Second, func(l proctest.Log) bool { return strings.Contains(l.Msg, "reload failed") })
	if !ok {
		t.Fatal("no reload error logged after SIGHUP with a broken config")
	}
	t.Logf("reload error: %s: %s", l.Msg, l.Str("error"))
	select {
	case <-d.Exited():
		t.Fatalf("daemon exited after a bad reload: %v", d.Err())
	default:
	}
	if ips := arriveGARPs(t, h, d, "vif61.0", "g61"); len(ips) != 1 || ips[0] != old {
		t.Errorf("arrival after the failed reload: GARPs for %v, want the old config's [%v]", ips, old)
	}

	if err := os.WriteFile(cfg, []byte(reloadConfig("10.0.0.62")), 0o644); err != nil {
		t.Fatal(err)
	}
	d.signal(syscall.SIGHUP)
	if _, ok := d.waitLog(3*time.Second, func(l proctest.Log) bool { return l.Msg == "config reloaded" }); !ok {
		t.Fatal("no \"config reloaded\" after SIGHUP with a good config")
	}
	if ips := arriveGARPs(t, h, d, "vif62.0", "g62"); len(ips) != 1 || ips[0] != updated {
		t.Errorf("arrival after the good reload: GARPs for %v, want [%v]", ips, updated)
	}
}

// SIGTERM in the middle of a burst: the daemon exits 0 and nothing more
// leaves the host, although the burst had rounds to go.
func TestSigtermDuringBurst(t *testing.T) {
	bin := requireE2E(t)
	h := newHost(t)
	mac := macN(7)
	h.addVif("vif7.0", "g7")
	d := startDaemon(t, bin, h.ns, writeConfig(t, "guests:\n"+guestYAML("vif7.0", mac, "10.0.0.70")))
	h.setGuest("g7", true)
	// Two rounds out (0 and 50 ms); the third is due 150 ms later.
	if fs := h.wire.waitFor(2*time.Second, 2, func(f frame) bool { return f.Kind == kindRARP && f.Src == mac }); len(fs) < 2 {
		t.Fatalf("burst did not start: %d RARPs", len(fs))
	}
	d.signal(syscall.SIGTERM)
	select {
	case <-d.Exited():
	case <-time.After(5 * time.Second):
		t.Fatal("daemon still running 5 s after SIGTERM")
	}
	exited := time.Now()
	if d.Err() != nil {
		t.Errorf("daemon exit after SIGTERM: %v, want status 0", d.Err())
	}
	time.Sleep(1200 * time.Millisecond) // past the rest of the schedule
	rarps := h.wire.all(func(f frame) bool { return f.Kind == kindRARP && f.Src == mac })
	late := h.wire.all(func(f frame) bool { return f.Src == mac && f.At.After(exited) })
	t.Logf("%d RARPs in all; %d frames after exit", len(rarps), len(late))
	if len(late) != 0 {
		t.Errorf("%d frames left the host after the daemon exited", len(late))
	}
	if len(rarps) >= 5 {
		t.Errorf("%d RARPs: the burst ran to completion despite SIGTERM", len(rarps))
	}
	if _, ok := d.waitLog(0, func(l proctest.Log) bool { return l.Msg == "burst" && l.Str("result") == "cancelled" }); !ok {
		t.Errorf("no cancelled burst logged")
	}
}

// A port already ready when the daemon starts is not announced (a restart
// must not storm the network) unless --announce-existing asks for it.
func TestAnnounceExisting(t *testing.T) {
	bin := requireE2E(t)
	h := newHost(t)
	mac := macN(8)
	h.addVif("vif8.0", "g8")
	h.setGuest("g8", true)
	if !h.carrier("vif8.0") {
		t.Fatal("vif8.0 has no carrier")
	}
	cfg := writeConfig(t, "guests:\n"+guestYAML("vif8.0", mac, "10.0.0.80"))

	d := startDaemon(t, bin, h.ns, cfg)
	time.Sleep(time.Second)
	if n := len(h.wire.announcements(mac)); n != 0 {
		t.Errorf("default start: %d frames for a port that was ready before start, want none", n)
	}
	if a := d.metric(t, "selfannounce_arrivals_total"); a != 0 {
		t.Errorf("default start: %v arrivals counted, want 0", a)
	}
	if err := d.stop(5 * time.Second); err != nil {
		t.Fatalf("stopping the first daemon: %v", err)
	}

	started := time.Now()
	startDaemon(t, bin, h.ns, cfg, "--announce-existing")
	fs := h.wire.waitFor(2*time.Second, 15, func(f frame) bool { return f.Src == mac && isAnnouncement(f) })
	if len(fs) == 0 {
		t.Fatal("--announce-existing: the ready port was not announced")
	}
	t.Logf("--announce-existing: first frame %v after start, %d frames %v", fs[0].At.Sub(started), len(fs), kinds(fs))
	if k := kinds(fs); k[kindRARP] != 5 || k[kindGARP] != 5 {
		t.Errorf("--announce-existing: frames %v, want one full burst", k)
	}
}
