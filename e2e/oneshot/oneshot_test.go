//go:build linux

package oneshot_test

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/announce/frame"
	"github.com/selfannounce/selfannounce/internal/wiretest"
)

// qemuRARP is frame 1 of a capture of QEMU 7.2's announce-self for
// 52:54:00:12:34:56: a 60-byte RARP reverse request, padding included.
const qemuRARP = "ffffffffffff525400123456803500010800060400035254001234560000000052540012345600000000" +
	"000000000000000000000000000000000000"

// qemuOffsets is when each round leaves, relative to the first, as
// net/announce.c times them: after a round, with `round` rounds still to
// go, QEMU waits initial + (rounds - round - 1) * step, capped at max.
func qemuOffsets(initial, step, max time.Duration, rounds int) []time.Duration {
	var out []time.Duration
	var at time.Duration
	for round := rounds; round > 0; round-- {
		out = append(out, at)
		left := round - 1
		d := initial + time.Duration(rounds-left-1)*step
		if d < 0 || d > max {
			d = max
		}
		at += d
	}
	return out
}

// wantRound builds one round with the reference builders: the RARP, a GARP
// per IPv4 address, then an NA per IPv6 address.
func wantRound(t *testing.T, mac string, ips []string, vlan uint16) [][]byte {
	t.Helper()
	m := mustMAC(t, mac)
	rarp, err := frame.RARP(m, vlan)
	if err != nil {
		t.Fatal(err)
	}
	out := [][]byte{rarp}
	for _, v4 := range []bool{true, false} {
		for _, s := range ips {
			ip := netip.MustParseAddr(s)
			if ip.Is4() != v4 {
				continue
			}
			var f []byte
			if v4 {
				f, err = frame.GARP(m, ip, vlan)
			} else {
				f, err = frame.NA(m, ip, vlan)
			}
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, f)
		}
	}
	return out
}

// checkBurst asserts got is exactly len(offsets) rounds of round, byte for
// byte and in order, and that the sender waited between rounds: the engine
// arms each round its delay after the previous round's last write, and a
// timer never fires early, so on the wire the gap from one round's last
// frame to the next round's first is at least that delay. The check allows
// half of it for the kernel stamping a frame late. A load that wakes the
// sender late only widens the gaps, so nothing here has an upper bound: the
// measured offsets are logged, the exact plan is checked by --dry-run
// (TestDryRun, TestAnnounceScheduleFlags) and the engine's timing on a fake
// clock (announce/burst).
func checkBurst(t *testing.T, got []wiretest.Frame, round [][]byte, offsets []time.Duration) {
	t.Helper()
	if len(got) != len(round)*len(offsets) {
		t.Fatalf("captured %d frames from the guest MAC, want %d rounds of %d:%s", len(got), len(offsets), len(round), describe(got))
	}
	t0 := got[0].At
	var measured []string
	for i, f := range got {
		r, k := i/len(round), i%len(round)
		if !bytes.Equal(f.Data, round[k]) {
			t.Errorf("round %d frame %d:\n got %x\nwant %x", r+1, k+1, f.Data, round[k])
		}
		if k == 0 {
			measured = append(measured, fmt.Sprintf("+%v (plan +%v)", f.At.Sub(t0).Round(100*time.Microsecond), offsets[r]))
		}
		if k == 0 && r > 0 {
			delay := offsets[r] - offsets[r-1]
			if gap := f.At.Sub(got[i-1].At); gap < delay/2 {
				t.Errorf("round %d left %v after round %d ended, want at least its %v delay (half allowed for stamping): the sender did not wait", r+1, gap, r, delay)
			}
		}
	}
	t.Logf("rounds on the wire: %s", strings.Join(measured, ", "))
}

// announceBurst teaches the field state, runs announce with args and checks
// the burst seen on the switch side of the uplink. It returns the frames
// at the switch and at the guest.
func announceBurst(t *testing.T, l *lab, round [][]byte, offsets []time.Duration, args ...string) (onWire, atGuest []wiretest.Frame) {
	t.Helper()
	l.teach(t, guestMAC)
	sw := startCapture(t, l.sw, "sw0")
	guest := startCapture(t, l.guest, "eth0")
	r := l.announce(t, args...)
	if r.Code != 0 {
		t.Fatalf("announce exited %d: %s", r.Code, r.Stderr)
	}
	onWire, atGuest = sw.Stop(t), guest.Stop(t)
	checkBurst(t, from(onWire, mustMAC(t, guestMAC)), round, offsets)
	return onWire, atGuest
}

// TestAnnounceVif is the scenario: a guest that migrated in, whose
// MAC the host bridge still has behind its uplink.
func TestAnnounceVif(t *testing.T) {
	l := newLab(t)
	round := wantRound(t, guestMAC, []string{"10.0.0.10", "fd00::10"}, 0)
	onWire, atGuest := announceBurst(t, l, round, qemuOffsets(50*time.Millisecond, 100*time.Millisecond, 550*time.Millisecond, 5),
		"--vif", "vif3.0", "--mac", guestMAC, "--ip", "10.0.0.10", "--ip", "fd00::10")

	// The bridge's own IGMP reports may cross too; no other announcement may.
	if a := announcements(onWire, mustMAC(t, guestMAC)); len(a) != 15 {
		t.Errorf("switch received %d announcement frames, want only the 15 of the burst:%s", len(a), describe(a))
	}
	if got := hex.EncodeToString(round[0]); got != qemuRARP {
		t.Errorf("frame.RARP = %s, want QEMU's %s", got, qemuRARP)
	}
	if got := hex.EncodeToString(from(onWire, mustMAC(t, guestMAC))[0].Data); got != qemuRARP {
		t.Errorf("first frame on the wire = %s, want QEMU's RARP %s", got, qemuRARP)
	}

	if port := fdbPort(t, l.sw, "swbr", guestMAC); port != "sw0" {
		t.Errorf("switch FDB has %s on %q, want sw0 (the host's port)", guestMAC, port)
	}
	checkRepaired(t, l)

	if a := announcements(atGuest, mustMAC(t, guestMAC)); len(a) != 0 {
		t.Errorf("the guest received %d announcement frames, want none:%s", len(a), describe(a))
	}
}

// checkRepaired asserts the host bridge points the guest MAC at its vif
// with a dynamic entry, which ages and re-learns like any other.
func checkRepaired(t *testing.T, l *lab) {
	t.Helper()
	e, ok := fdbLookup(t, l.host, "br0", guestMAC)
	if !ok || e.Ifname != "vif3.0" {
		t.Errorf("host bridge FDB has %s on %q, want vif3.0", guestMAC, e.Ifname)
	}
	if e.State != "" || len(e.Flags) != 0 {
		t.Errorf("host bridge FDB entry %+v: want a dynamic entry (no state, no flags)", e)
	}
}

// TestAnnounceScheduleFlags checks the four schedule flags reach the wire
// as QEMU's formula spaces them, the max cap included.
func TestAnnounceScheduleFlags(t *testing.T) {
	l := newLab(t)
	offsets := qemuOffsets(30*time.Millisecond, 100*time.Millisecond, 200*time.Millisecond, 4)
	// 30, 130, then 230 capped at 200.
	if want := []time.Duration{0, 30 * time.Millisecond, 160 * time.Millisecond, 360 * time.Millisecond}; fmt.Sprint(offsets) != fmt.Sprint(want) {
		t.Fatalf("qemuOffsets = %v, want %v", offsets, want)
	}
	args := []string{"--vif", "vif3.0", "--mac", guestMAC, "--ip", "10.0.0.10",
		"--initial", "30ms", "--step", "100ms", "--max", "200ms", "--rounds", "4"}
	// The plan the engine is handed, to the millisecond: the wire below
	// can only show that the sender waited, not by how much exactly.
	r := l.announce(t, append(args, "--dry-run")...)
	if r.Code != 0 {
		t.Fatalf("announce --dry-run exited %d: %s", r.Code, r.Stderr)
	}
	if got := planOffsets(r.Stdout); fmt.Sprint(got) != fmt.Sprint(offsets) {
		t.Errorf("dry-run plans rounds at %v, want %v:\n%s", got, offsets, r.Stdout)
	}
	announceBurst(t, l, wantRound(t, guestMAC, []string{"10.0.0.10"}, 0), offsets, args...)
	checkRepaired(t, l)
}

// planOffsets are the distinct send times of the rounds a --dry-run lists.
func planOffsets(out string) []time.Duration {
	var offs []time.Duration
	seen := map[string]bool{}
	for _, line := range strings.Split(out, "\n") {
		m := planLine.FindStringSubmatch(line)
		if m == nil || seen[m[2]] {
			continue
		}
		seen[m[2]] = true
		ms, _ := strconv.Atoi(m[1])
		offs = append(offs, time.Duration(ms)*time.Millisecond)
	}
	return offs
}

// TestAnnounceConfigGuest announces a guest known only from the config
// file's guests entry: no --mac, no --ip.
func TestAnnounceConfigGuest(t *testing.T) {
	l := newLab(t)
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	body := fmt.Sprintf("guests:\n  - port: \"vif3.*\"\n    mac: %q\n    ips: [\"10.0.0.20\", \"fd00::20\"]\n", guestMAC)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	announceBurst(t, l, wantRound(t, guestMAC, []string{"10.0.0.20", "fd00::20"}, 0),
		qemuOffsets(50*time.Millisecond, 100*time.Millisecond, 550*time.Millisecond, 5),
		"--vif", "vif3.0", "--config", cfg)
	if port := fdbPort(t, l.sw, "swbr", guestMAC); port != "sw0" {
		t.Errorf("switch FDB has %s on %q, want sw0", guestMAC, port)
	}
	checkRepaired(t, l)
}

var planLine = regexp.MustCompile(`^\s*\+(\d+)ms\s+round (\d+)\s+(\S+)\s+(\S+)\s+(\d+) bytes\s+([0-9a-f]+)`)

// TestDryRun checks --dry-run describes the path and every frame with its
// send time, and changes nothing: no frame, no FDB repair.
func TestDryRun(t *testing.T) {
	l := newLab(t)
	l.teach(t, guestMAC)
	sw := startCapture(t, l.sw, "sw0")
	guest := startCapture(t, l.guest, "eth0")
	r := l.announce(t, "--vif", "vif3.0", "--mac", guestMAC, "--ip", "10.0.0.10", "--ip", "fd00::10", "--dry-run")
	if r.Code != 0 {
		t.Fatalf("announce --dry-run exited %d: %s", r.Code, r.Stderr)
	}
	for _, want := range []string{"port vif3.0", "bridge br0", "vlan none", "uplink up0", "tag none", guestMAC, "10.0.0.10", "fd00::10"} {
		if !strings.Contains(r.Stdout, want) {
			t.Errorf("dry-run output lacks %q:\n%s", want, r.Stdout)
		}
	}
	round := wantRound(t, guestMAC, []string{"10.0.0.10", "fd00::10"}, 0)
	kinds := []string{"rarp", "garp", "na"}
	offsets := qemuOffsets(50*time.Millisecond, 100*time.Millisecond, 550*time.Millisecond, 5)
	var n int
	for _, line := range strings.Split(r.Stdout, "\n") {
		m := planLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		rd, k := n/3, n%3
		n++
		if rd >= len(offsets) {
			continue
		}
		ms, _ := strconv.Atoi(m[1])
		size, _ := strconv.Atoi(m[5])
		if time.Duration(ms)*time.Millisecond != offsets[rd] || m[2] != strconv.Itoa(rd+1) || m[3] != kinds[k] || m[4] != "up0" ||
			size != len(round[k]) || !strings.HasPrefix(hex.EncodeToString(round[k]), m[6]) {
			t.Errorf("plan line %d = %q, want +%dms round %d %s via up0, %d bytes of %x", n, line, offsets[rd].Milliseconds(), rd+1, kinds[k], len(round[k]), round[k])
		}
	}
	if n != 15 {
		t.Errorf("dry-run listed %d frames, want 15:\n%s", n, r.Stdout)
	}
	if a := announcements(sw.Stop(t), mustMAC(t, guestMAC)); len(a) != 0 {
		t.Errorf("dry-run sent %d frames:%s", len(a), describe(a))
	}
	if a := announcements(guest.Stop(t), mustMAC(t, guestMAC)); len(a) != 0 {
		t.Errorf("dry-run delivered %d frames to the guest:%s", len(a), describe(a))
	}
	if port := fdbPort(t, l.host, "br0", guestMAC); port != "up0" {
		t.Errorf("dry-run changed the host bridge: %s now on %q, want still up0", guestMAC, port)
	}
	if port := fdbPort(t, l.sw, "swbr", guestMAC); port != "sw1" {
		t.Errorf("switch FDB has %s on %q after a dry run, want still sw1", guestMAC, port)
	}
}
