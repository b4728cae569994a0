//go:build linux

package daemon_test

import (
	"bufio"
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/internal/lab"
	"github.com/selfannounce/selfannounce/internal/wiretest"
)

// A silent VM live-migrates Xen-style onto host B, where the daemon runs:
// the client pinging every 10 ms loses its pings in one outage at the move
// and gets them back, and afterwards the switch and host B's bridge both forward the guest's MAC to its new
// place.
func TestSilentMigration(t *testing.T) {
	bin := requireE2E(t)
	l := newLab(t, lab.Options{})
	cw := watchCarrier(t, l.HostB)
	capB := startCapture(t, l.Switch, "pB")
	startDaemon(t, bin, l.HostB, writeConfig(t, labConfig("")))

	rep, err := l.Migrate(context.Background(), "daemon", lab.DefaultMigration())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%v", rep)
	for _, bad := range l.Healed(rep) {
		t.Error(bad)
	}
	fs := capB.announcements(lab.GuestMAC)
	carrier, ok := cw.at(lab.DstVif)
	if len(fs) == 0 || !ok {
		t.Fatalf("no announcement on the switch (%d frames) or no carrier event seen (%v)", len(fs), ok)
	}
	t.Logf("first frame on the switch %v after carrier on %s; frames by kind %v", fs[0].At.Sub(carrier), lab.DstVif, kinds(fs))
	// One burst: five rounds of RARP, GARP and NA on the one uplink.
	if k := kinds(fs); k[kindRARP] != 5 || k[kindGARP] != 5 || k[kindNA] != 5 {
		t.Errorf("frames by kind %v, want 5 of each (one QEMU-schedule burst)", k)
	}
}

// The destination vif sits bridged and admin-up without carrier for a
// second, as XenServer leaves it while the source VM still runs: nothing
// may leave host B then, since the guest still lives on host A. Carrier is
// the arrival.
func TestNothingBeforeCarrier(t *testing.T) {
	bin := requireE2E(t)
	l := newLab(t, lab.Options{})
	capB := startCapture(t, l.Switch, "pB")
	capC := startEgressCapture(t, l.Switch, "pC") // what the switch floods to the client
	startDaemon(t, bin, l.HostB, writeConfig(t, labConfig("")))

	if err := l.PlugDestination(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if st, err := wiretest.BrportState(l.HostB, lab.DstVif); err != nil || st != 0 {
		t.Fatalf("destination vif brport state %d (%v), want 0 (disabled: no carrier)", st, err)
	}
	if n := len(capB.announcements("")); n != 0 {
		t.Errorf("%d announcement frames reached the switch from host B before carrier", n)
	}
	if n := len(capC.announcements("")); n != 0 {
		t.Errorf("%d announcement frames flooded by the switch before carrier", n)
	}
	if p, _ := l.FDBPort(l.Switch, "sw", lab.GuestMAC); p != "pA" {
		t.Errorf("switch FDB moved to %q before the guest resumed", p)
	}
	resumed := time.Now()
	if err := l.Resume(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*capture{capB, capC} {
		fs := c.waitFor(3*time.Second, 15, isAnnouncementFrom(lab.GuestMAC))
		if len(fs) == 0 {
			t.Errorf("%s: no announcement after carrier", c.Name())
			continue
		}
		if fs[0].At.Before(resumed) {
			t.Errorf("%s: first frame %v before the resume", c.Name(), resumed.Sub(fs[0].At))
		}
		t.Logf("%s: first frame %v after the resume began, %d frames", c.Name(), fs[0].At.Sub(resumed), len(fs))
	}
	if out, err := l.Client.Run("ping", "-c", "3", "-i", "0.1", "-W", "1", lab.GuestIP); err != nil {
		t.Errorf("client cannot reach the migrated guest: %v\n%s", err, out)
	}
}

// stateLog polls a bridge port's STP state inside the namespace. Each
// reading is stamped just before and just after it was taken, and each
// bound uses the stamp that a slow poller cannot make wrong: a port not
// yet forwarding when read was not forwarding at the stamp before the
// read; one forwarding when read was forwarding by the stamp after it.
type stateLog struct {
	mu       sync.Mutex
	lastNot3 time.Time // before the last reading that was not forwarding
	first3   time.Time // after the first reading of forwarding
	seen     map[int]bool
}

func pollBrportState(t *testing.T, l *lab.Lab, port string) *stateLog {
	t.Helper()
	s := &stateLog{seen: map[int]bool{}}
	script := fmt.Sprintf(`f=/sys/class/net/%s/brport/state
while :; do s=; a=$EPOCHREALTIME; read s < $f 2>/dev/null || s=-1; echo "$a $EPOCHREALTIME $s"; sleep 0.005; done`, port)
	cmd := l.HostB.Cmd("bash", "-c", script)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 3 {
				continue
			}
			ts0, err0 := strconv.ParseFloat(f[0], 64)
			ts1, err1 := strconv.ParseFloat(f[1], 64)
			st, err2 := strconv.Atoi(f[2])
			if err0 != nil || err1 != nil || err2 != nil {
				continue
			}
			before, after := time.Unix(0, int64(ts0*1e9)), time.Unix(0, int64(ts1*1e9))
			s.mu.Lock()
			s.seen[st] = true
			if st == 3 {
				if s.first3.IsZero() {
					s.first3 = after
				}
			} else if s.first3.IsZero() {
				s.lastNot3 = before
			}
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); <-done })
	return s
}

func (s *stateLog) get() (lastNot3, first3 time.Time, seen map[int]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := map[int]bool{}
	for k, v := range s.seen {
		c[k] = v
	}
	return s.lastNot3, s.first3, c
}

// Host B's bridge runs STP with a 2 s forward delay: the new port spends
// 4 s listening and learning, dropping everything. The announcement must
// wait for forwarding, and then not wait on: it follows forwarding sooner
// than forwarding followed the resume (the kernel's own 4 s, measured in
// the same run). Then the migration heals.
func TestSTPForwardDelay(t *testing.T) {
	bin := requireE2E(t)
	requireBash(t)
	l := newLab(t, lab.Options{STPForwardDelay: 2 * time.Second})
	capB := startCapture(t, l.Switch, "pB")
	startDaemon(t, bin, l.HostB, writeConfig(t, labConfig("")))
	if err := l.PlugDestination(); err != nil {
		t.Fatal(err)
	}
	st := pollBrportState(t, l, lab.DstVif)
	time.Sleep(100 * time.Millisecond)
	resumed := time.Now()
	if err := l.Resume(); err != nil {
		t.Fatal(err)
	}
	fs := capB.waitFor(8*time.Second, 1, isAnnouncementFrom(lab.GuestMAC))
	// The poller may lag the frame by a reading or two.
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if _, f3, _ := st.get(); !f3.IsZero() {
			break
		}
	}
	lastNot3, first3, seen := st.get()
	if len(fs) == 0 {
		t.Fatalf("no announcement within 8 s of the resume (states seen %v, forwarding at %v)", seen, first3.Sub(resumed))
	}
	if !seen[1] || !seen[2] || first3.IsZero() {
		t.Fatalf("port did not go listening → learning → forwarding (states seen %v)", seen)
	}
	t.Logf("port forwarding %v after resume; last non-forwarding reading %v; first frame %v after resume, %v after the first forwarding reading",
		first3.Sub(resumed), lastNot3.Sub(resumed), fs[0].At.Sub(resumed), fs[0].At.Sub(first3))
	if !fs[0].At.After(lastNot3) {
		t.Errorf("first frame left %v before the port's last non-forwarding reading", lastNot3.Sub(fs[0].At))
	}
	if lag, floor := fs[0].At.Sub(first3), first3.Sub(resumed); lag > floor {
		t.Errorf("first frame only %v after the port reached forwarding, longer than the %v the port took to get there", lag, floor)
	}
	if out, err := l.Client.Run("ping", "-c", "3", "-i", "0.1", "-W", "1", lab.GuestIP); err != nil {
		t.Errorf("migration did not heal: %v\n%s", err, out)
	}
	if p, _ := l.FDBPort(l.HostB, lab.Bridge, lab.GuestMAC); p != lab.DstVif {
		t.Errorf("host B bridge FDB: guest MAC on %q, want %s", p, lab.DstVif)
	}
}

// The RHEL Xen order: the vif gets carrier first and joins the bridge
// later. Announcing at carrier would send frames the bridge cannot yet
// deliver; the daemon waits for the join.
func TestCarrierBeforeAttach(t *testing.T) {
	bin := requireE2E(t)
	l := newLab(t, lab.Options{})
	capB := startCapture(t, l.Switch, "pB")
	startDaemon(t, bin, l.HostB, writeConfig(t, labConfig("")))
	sh(t, l.HostB, fmt.Sprintf(`
		ip link add %[1]s type veth peer name ethnew netns %[2]s
		ip link set %[1]s up`, lab.DstVif, l.VM.Name))
	if err := l.Resume(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond)
	if out := sh(t, l.HostB, "ip -o link show "+lab.DstVif); !strings.Contains(out, "LOWER_UP") {
		t.Fatalf("vif has no carrier before the join: %s", out)
	}
	if n := len(capB.announcements("")); n != 0 {
		t.Errorf("%d announcement frames left host B before the vif joined its bridge", n)
	}
	joined := time.Now()
	sh(t, l.HostB, fmt.Sprintf("ip link set %s master %s", lab.DstVif, lab.Bridge))
	fs := capB.waitFor(3*time.Second, 15, isAnnouncementFrom(lab.GuestMAC))
	if len(fs) == 0 {
		t.Fatal("no announcement after the vif joined the bridge")
	}
	t.Logf("first frame %v after the join; %d frames %v", fs[0].At.Sub(joined), len(fs), kinds(fs))
	if fs[0].At.Before(joined) {
		t.Errorf("first frame %v before the join", joined.Sub(fs[0].At))
	}
	if out, err := l.Client.Run("ping", "-c", "3", "-i", "0.1", "-W", "1", lab.GuestIP); err != nil {
		t.Errorf("client cannot reach the migrated guest: %v\n%s", err, out)
	}
}

var icmpSeq = regexp.MustCompile(`icmp_seq=(\d+)`)

// A neighbour VM on host B keeps talking to the migrating VM. Before the
// migration host B's bridge learned the VM's MAC behind its uplink; unless
// that entry is repaired, the bridge sends the neighbour's frames to the
// switch, which will not send them back the way they came.
func TestNeighbourOnDestination(t *testing.T) {
	bin := requireE2E(t)
	l := newLab(t, lab.Options{})
	const nbrMAC, nbrIP = "02:00:00:00:00:03", "10.0.0.20"
	nbr := newNS(t, "nbr")
	sh(t, l.HostB, fmt.Sprintf(`
		ip link add vif3.0 type veth peer name eth0 netns %[1]s
		ip link set vif3.0 master %[2]s up`, nbr.Name, lab.Bridge))
	sh(t, nbr, fmt.Sprintf(`
		ip link set eth0 address %s
		ip addr add %s/24 dev eth0
		ip link set eth0 up`, nbrMAC, nbrIP))
	// The neighbour reaches the VM on host A, through host B's uplink, and
	// keeps its MAC; the guest learns the neighbour's.
	if out, err := nbr.Run("ping", "-c", "1", "-w", "5", "-i", "0.1", lab.GuestIP); err != nil {
		t.Fatalf("neighbour cannot reach the VM before the migration: %v\n%s", err, out)
	}
	sh(t, nbr, fmt.Sprintf("ip neigh replace %s lladdr %s dev eth0 nud permanent", lab.GuestIP, lab.GuestMAC))
	if p, _ := l.FDBPort(l.HostB, lab.Bridge, lab.GuestMAC); p != "up0" {
		t.Fatalf("host B bridge has the guest MAC on %q before the migration, want up0", p)
	}
	startDaemon(t, bin, l.HostB, writeConfig(t, labConfig("")))

	if err := l.PlugDestination(); err != nil {
		t.Fatal(err)
	}
	if err := l.Resume(); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	// Pings every 20 ms for 2 s from the neighbour. Those sent before the
	// daemon repaired host B's bridge go to the uplink and are lost: how
	// many is the daemon's reaction time on this machine, logged, not
	// judged. Judged: once the VM answers, it keeps answering (one outage,
	// at the move, that ends), and the last ping is answered.
	const pings = 100
	out, _ := nbr.Run("ping", "-n", "-c", strconv.Itoa(pings), "-i", "0.02", "-W", "1", lab.GuestIP)
	answered := map[int]bool{}
	for _, line := range strings.Split(out, "\n") {
		if m := icmpSeq.FindStringSubmatch(line); m != nil && strings.Contains(line, "bytes from") {
			n, _ := strconv.Atoi(m[1])
			answered[n] = true
		}
	}
	var missed []int
	for seq := 1; seq <= pings; seq++ {
		if !answered[seq] {
			missed = append(missed, seq)
		}
	}
	t.Logf("neighbour: %d/%d replies in the 2 s after the resume (%v), missed %v", len(answered), pings, time.Since(resumed), missed)
	switch {
	case !answered[pings]:
		t.Errorf("the neighbour's last ping went unanswered (missed %v): host B still does not deliver to the migrated VM\n%s", missed, out)
	case len(missed) > 0 && (missed[0] != 1 || lab.Runs(missed) > 1):
		t.Errorf("the neighbour lost pings after the VM had answered (missed %v), want one outage at the move\n%s", missed, out)
	}
	if p, _ := l.FDBPort(l.HostB, lab.Bridge, lab.GuestMAC); p != lab.DstVif {
		t.Errorf("host B bridge FDB: guest MAC on %q, want %s", p, lab.DstVif)
	}
}
