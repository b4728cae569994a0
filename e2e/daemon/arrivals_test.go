//go:build linux

package daemon_test

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/announce/config"
	"github.com/selfannounce/selfannounce/internal/proctest"
)

const burstsStarted = `selfannounce_bursts_total{result="started"}`

// A guest toggling its link 40 times in 4 s must not become 40 bursts on
// the network (at most 4 with the 1.5 s holddown), yet its last arrival is
// announced; and a VM that leaves and comes back 5 s later is announced
// both times, at once: not held back by the flap guard.
func TestFlappingGuest(t *testing.T) {
	bin := requireE2E(t)
	h := newHost(t)
	mac := macN(5)
	h.addVif("vif5.0", "g5")
	d := startDaemon(t, bin, h.ns, writeConfig(t, "guests:\n"+guestYAML("vif5.0", mac, "10.0.0.50")))

	lt := newLinkToggler(t, h.guests)
	start := time.Now()
	// 40 toggles of carrier (20 up, 20 down) on a 100 ms beat, then up
	// for good: the guest stays.
	for i := range 40 {
		time.Sleep(time.Until(start.Add(time.Duration(i) * 100 * time.Millisecond)))
		if err := lt.set("g5", i%2 == 0); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Until(start.Add(4 * time.Second)))
	if err := lt.set("g5", true); err != nil {
		t.Fatal(err)
	}
	lastUp := time.Now()
	took := lastUp.Sub(start)
	// Bursts start at least a holddown apart, the first at the first
	// toggle and the last at most a holddown after the final arrival: in
	// 4 s that is at most 4. A loaded machine that stretched the toggling
	// gets the bound its measured span allows, not a failure.
	hold := config.DefaultHolddown
	maxBursts := int(took/hold) + 2
	// The last arrival may be deferred to the end of the holddown.
	fs := h.wire.waitFor(hold+5*time.Second, 1, func(f frame) bool { return f.Kind == kindRARP && f.At.After(lastUp) })
	time.Sleep(1500 * time.Millisecond) // let every burst finish
	started := d.metric(t, burstsStarted)
	rarps := h.wire.all(func(f frame) bool { return f.Kind == kindRARP && f.Src == mac })
	t.Logf("40 carrier toggles in %v: %v bursts started (at most %d), %d RARPs on the wire, last arrival's first frame %v after it",
		took, started, maxBursts, len(rarps), firstAfter(fs, lastUp))
	if started > float64(maxBursts) {
		t.Errorf("%v bursts started for 40 carrier toggles in %v, want at most %d (one per %v holddown)", started, took, maxBursts, hold)
	}
	if len(fs) == 0 {
		t.Errorf("the guest's final arrival was never announced")
	}
	if len(rarps) > maxBursts*5 {
		t.Errorf("%d RARPs on the wire, more than %d bursts' worth", len(rarps), maxBursts)
	}

	// The VM leaves, then comes back 1 s and 5 s later: each arrival gets
	// its own burst, started by its carrier, not deferred by the flap
	// guard (its holddown long expired), and no frame before the carrier.
	for i, gap := range []time.Duration{time.Second, 5 * time.Second} {
		h.setGuest("g5", false)
		time.Sleep(gap)
		before := d.metric(t, burstsStarted)
		logged := len(d.bursts(mac))
		up := time.Now()
		h.setGuest("g5", true)
		fs := h.wire.waitFor(5*time.Second, 1, func(f frame) bool { return f.Kind == kindRARP && f.Src == mac && f.At.After(up) })
		if len(fs) == 0 {
			t.Fatalf("arrival %d (after %v away) not announced", i+1, gap)
		}
		t.Logf("arrival %d after %v away: first frame %v after carrier", i+1, gap, fs[0].At.Sub(up))
		// The burst's log line comes when it ends, five rounds later.
		isBurst := func(l proctest.Log) bool { return l.Msg == "burst" && strings.EqualFold(l.Str("mac"), mac) }
		if len(d.WaitLogs(10*time.Second, logged+1, isBurst)) <= logged {
			t.Fatalf("arrival %d: the daemon logged no burst for it", i+1)
		}
		if bs := d.bursts(mac)[logged:]; len(bs) != 1 || bs[0].Str("trigger") != "carrier" {
			var trig []string
			for _, b := range bs {
				trig = append(trig, b.Str("trigger"))
			}
			t.Errorf("arrival %d: bursts triggered by %v, want one by its carrier (not the flap guard's deferral)", i+1, trig)
		}
		if after := d.metric(t, burstsStarted); after != before+1 {
			t.Errorf("arrival %d: %v bursts started, want exactly 1", i+1, after-before)
		}
	}
}

func firstAfter(fs []frame, t0 time.Time) time.Duration {
	if len(fs) == 0 {
		return -1
	}
	return fs[0].At.Sub(t0)
}

// latencyTarget is the bound on the first-frame latency p99 when
// 200 VMs arrive at once. It is a speed target: `make bench` checks it
// (docs/performance.md); here it is only reported beside the measurement.
const latencyTarget = 250 * time.Millisecond

// 200 VMs arrive at once (a host evacuation landing here): every one gets
// one full burst, none before its carrier was raised, every bridge entry
// is repaired and every burst runs to completion. The first-frame latency
// is measured and logged; the 250 ms p99 target is judged by make bench.
func TestTwoHundredArrivals(t *testing.T) {
	bin := requireE2E(t)
	h := newHost(t)
	const n, first = 200, 100
	var cfg strings.Builder
	cfg.WriteString("guests:\n")
	var plug, arrive []string
	for i := first; i < first+n; i++ {
		vif, peer := fmt.Sprintf("vif%d.0", i), fmt.Sprintf("g%d", i)
		cfg.WriteString(guestYAML(vif, macN(i), ipN(i)))
		plug = append(plug, h.vifBatch(vif, peer)...)
		arrive = append(arrive, "link set "+peer+" up")
	}
	batch(t, h.ns, plug)
	var macs []string
	for i := first; i < first+n; i++ {
		macs = append(macs, macN(i))
	}
	// As in a real evacuation, the host has seen every guest's broadcasts
	// behind its uplink: every arrival needs its bridge entry repaired.
	h.teach(macs)
	if fdb := h.fdb(); fdb[macN(first)] != "up0" || fdb[macN(first+n-1)] != "up0" {
		t.Fatalf("host bridge did not learn the guests behind up0")
	}
	d := startDaemon(t, bin, h.ns, writeConfig(t, cfg.String()))
	cw := watchCarrier(t, h.ns)

	t0 := time.Now()
	batch(t, h.guests, arrive)
	raise := time.Since(t0)
	t.Logf("200 carriers raised in %v", raise)
	// Five rounds of RARP + GARP each: 2000 frames.
	h.wire.waitFor(15*time.Second, n*10, func(f frame) bool { return isAnnouncement(f) })

	var lats []time.Duration
	for i := first; i < first+n; i++ {
		vif, mac := fmt.Sprintf("vif%d.0", i), macN(i)
		up, ok := cw.at(vif)
		if !ok {
			t.Errorf("%s: carrier never seen", vif)
			continue
		}
		fs := h.wire.announcements(mac)
		if len(fs) == 0 {
			t.Errorf("%s (%s): no announcement", vif, mac)
			continue
		}
		if k := kinds(fs); k[kindRARP] != 5 || k[kindGARP] != 5 {
			t.Errorf("%s (%s): frames %v, want one full burst (5 RARP, 5 GARP)", vif, mac, k)
		}
		if fs[0].At.Before(t0) {
			t.Errorf("%s: first frame %v before the carriers were raised", vif, t0.Sub(fs[0].At))
		}
		// Netlink carries no receive timestamp: the watcher stamps a
		// notification when it reads it, and with 200 queued it can read
		// one after the daemon, woken by the same notification, has
		// already answered. Such an arrival took no measurable time.
		lats = append(lats, max(fs[0].At.Sub(up), 0))
	}
	if len(lats) == 0 {
		t.Fatal("no latencies")
	}
	t.Logf("in carrier order: %v ... %v", lats[:5], lats[len(lats)-5:])
	slices.Sort(lats)
	p := func(q float64) time.Duration { return lats[min(len(lats)-1, int(q*float64(len(lats))+0.999)-1)] }
	t.Logf("first-frame latency after carrier over %d arrivals: p50 %v, p90 %v, p99 %v, max %v (target p99 %v, judged by make bench)", len(lats), p(.5), p(.9), p(.99), lats[len(lats)-1], latencyTarget)
	time.Sleep(200 * time.Millisecond)
	fdb := h.fdb()
	moved := 0
	for i := first; i < first+n; i++ {
		if fdb[macN(i)] == fmt.Sprintf("vif%d.0", i) {
			moved++
		}
	}
	if moved != n {
		t.Errorf("host bridge forwards %d of %d guest MACs to their vifs, want all", moved, n)
	}
	if c := d.metric(t, `selfannounce_bursts_total{result="completed"}`); c != n {
		t.Errorf("%v bursts completed, want %d", c, n)
	}
}

// The daemon's netlink socket is shrunk to 4 KiB and overruns while 300
// unrelated links appear at the same moment as 20 VM arrivals: every
// arrival is still announced, and exactly once.
func TestNetlinkOverrun(t *testing.T) {
	bin := requireE2E(t)
	h := newHost(t)
	const n, first = 20, 400
	var cfg strings.Builder
	cfg.WriteString("guests:\n")
	var plug, arrive, noise []string
	for i := first; i < first+n; i++ {
		vif, peer := fmt.Sprintf("vif%d.0", i), fmt.Sprintf("g%d", i)
		cfg.WriteString(guestYAML(vif, macN(i), ipN(i)))
		plug = append(plug, h.vifBatch(vif, peer)...)
		arrive = append(arrive, "link set "+peer+" up")
	}
	for i := range 300 {
		noise = append(noise, fmt.Sprintf("link add x%d type veth peer name y%d", i, i), fmt.Sprintf("link set x%d up", i))
	}
	batch(t, h.ns, plug)
	d := startDaemon(t, bin, h.ns, writeConfig(t, cfg.String()), "--netlink-rcvbuf", "4096")
	dropsBefore := netlinkDrops(t, h)

	// Half the arrivals land before the noise, half in the middle of it.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		batch(t, h.ns, noise)
	}()
	batch(t, h.guests, arrive[:n/2])
	time.Sleep(20 * time.Millisecond)
	batch(t, h.guests, arrive[n/2:])
	wg.Wait()
	h.wire.waitFor(10*time.Second, n*10, func(f frame) bool { return isAnnouncement(f) })
	time.Sleep(time.Second)

	drops := netlinkDrops(t, h) - dropsBefore
	t.Logf("daemon's rtnetlink socket dropped %d messages", drops)
	if drops == 0 {
		t.Errorf("no netlink overrun happened: the test proves nothing about recovery")
	}
	for i := first; i < first+n; i++ {
		mac := macN(i)
		bs := d.bursts(mac)
		rarps := h.wire.all(func(f frame) bool { return f.Kind == kindRARP && f.Src == mac })
		if len(bs) != 1 || len(rarps) != 5 {
			t.Errorf("vif%d.0 (%s): %d bursts logged, %d RARPs on the wire; want exactly 1 burst of 5", i, mac, len(bs), len(rarps))
		}
	}
	if s := d.metric(t, burstsStarted); s != n {
		t.Errorf("%v bursts started, want %d", s, n)
	}
}

// netlinkDrops sums the drop counters of the rtnetlink sockets subscribed
// to link events in the host namespace: the kernel's own record of
// overruns. The test's tools open none there.
func netlinkDrops(t *testing.T, h *host) int {
	t.Helper()
	out := sh(t, h.ns, "cat /proc/net/netlink")
	total := 0
	for _, line := range strings.Split(out, "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 10 || f[1] != "0" {
			continue
		}
		groups, err := strconv.ParseUint(f[3], 16, 64)
		if err != nil || groups&1 == 0 {
			continue
		}
		drops, _ := strconv.Atoi(f[8])
		total += drops
	}
	return total
}
