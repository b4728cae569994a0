//go:build linux

package oneshot_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/announce/frame"
	"github.com/selfannounce/selfannounce/internal/proctest"
)

// sniffLine is one announcement as `announce sniff` reports it, from
// either output form.
type sniffLine struct {
	Iface, VLAN, Kind, MAC, IP string
}

func (s sniffLine) String() string {
	return fmt.Sprintf("%s vlan %s %s %s %s", s.Iface, s.VLAN, s.Kind, s.MAC, s.IP)
}

// parsePlain reads "TIME IFACE VLAN KIND MAC IP" lines.
func parsePlain(t *testing.T, out string) []sniffLine {
	t.Helper()
	var ls []sniffLine
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 6 {
			t.Fatalf("sniff line %q: want 6 fields (time, interface, vlan, kind, mac, ip)", line)
		}
		if _, err := time.Parse(time.RFC3339Nano, f[0]); err != nil {
			t.Errorf("sniff line %q: time: %v", line, err)
		}
		ls = append(ls, sniffLine{Iface: f[1], VLAN: f[2], Kind: f[3], MAC: f[4], IP: f[5]})
	}
	return ls
}

// parseJSON reads one JSON object per line, rendering vlan 0 as "-" and a
// null ip as "-", as the plain form does, so both compare alike.
func parseJSON(t *testing.T, out string) []sniffLine {
	t.Helper()
	var ls []sniffLine
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var j struct {
			Time      *time.Time `json:"time"`
			Interface string     `json:"interface"`
			VLAN      *uint16    `json:"vlan"`
			Kind      string     `json:"kind"`
			MAC       string     `json:"mac"`
			IP        *string    `json:"ip"`
			SrcMAC    string     `json:"src_mac"`
		}
		if err := json.Unmarshal([]byte(line), &j); err != nil {
			t.Fatalf("sniff --json line %q: %v", line, err)
		}
		if j.Time == nil || j.VLAN == nil {
			t.Fatalf("sniff --json line %q lacks time or vlan", line)
		}
		if j.SrcMAC != j.MAC {
			t.Errorf("sniff --json line %q: src_mac %s, want the announced %s (sent as the guest)", line, j.SrcMAC, j.MAC)
		}
		l := sniffLine{Iface: j.Interface, VLAN: "-", Kind: j.Kind, MAC: j.MAC, IP: "-"}
		if *j.VLAN != 0 {
			l.VLAN = fmt.Sprint(*j.VLAN)
		}
		if j.IP != nil {
			l.IP = *j.IP
		}
		ls = append(ls, l)
	}
	return ls
}

func byMAC(ls []sniffLine, mac string) []sniffLine {
	var out []sniffLine
	for _, l := range ls {
		if l.MAC == mac {
			out = append(out, l)
		}
	}
	return out
}

// TestSniff runs `announce sniff` (JSON and plain) in the switch namespace
// while the host announces, after injecting a pre-2009 QEMU RARP and a
// VLAN-tagged GARP on the wire.
func TestSniff(t *testing.T) {
	l := newLab(t)
	l.teach(t, guestMAC)
	js := proctest.Start(t, l.sw, l.bin, "sniff", "--iface", "sw0", "--json")
	plain := proctest.Start(t, l.sw, l.bin, "sniff", "--iface", "sw0")

	const legacyMAC = "02:00:00:00:08:35"
	legacy, err := frame.RARP(mustMAC(t, legacyMAC), 0)
	if err != nil {
		t.Fatal(err)
	}
	legacy[12], legacy[13] = 0x08, 0x35
	// The legacy RARP doubles as the readiness probe: until a sniffer has
	// printed one, it may not have opened its socket yet.
	eventually(t, 10*time.Second, func() error {
		inject(t, l.host, "up0", legacy)
		time.Sleep(50 * time.Millisecond)
		if !strings.Contains(js.Stdout(), `"rarp-0835"`) || !strings.Contains(plain.Stdout(), " rarp-0835 ") {
			return fmt.Errorf("sniffers did not report the legacy RARP; json: %q plain: %q; stderr: %s %s",
				js.Stdout(), plain.Stdout(), js.Stderr(), plain.Stderr())
		}
		return nil
	})

	const taggedMAC, taggedIP = "02:00:00:00:01:00", "192.0.2.7"
	tagged, err := frame.GARP(mustMAC(t, taggedMAC), netip.MustParseAddr(taggedIP), 100)
	if err != nil {
		t.Fatal(err)
	}
	raw := startCapture(t, l.sw, "sw0")
	inject(t, l.host, "up0", tagged)

	r := l.announce(t, "--vif", "vif3.0", "--mac", guestMAC, "--ip", "10.0.0.10", "--ip", "fd00::10")
	if r.Code != 0 {
		t.Fatalf("announce exited %d: %s", r.Code, r.Stderr)
	}
	eventually(t, 5*time.Second, func() error {
		for _, p := range []*proctest.Proc{js, plain} {
			if n := strings.Count(p.Stdout(), guestMAC); n < 15 {
				return fmt.Errorf("sniffer printed %d lines for %s, want 15:\n%s", n, guestMAC, p.Stdout())
			}
		}
		return nil
	})
	jr, pr := signal(t, js, syscall.SIGTERM), signal(t, plain, syscall.SIGTERM)

	// The tag crossed the wire intact: the kernel moved it to auxdata and
	// the capture put it back.
	if got := from(raw.Stop(t), mustMAC(t, taggedMAC)); len(got) != 1 || got[0].VLAN != 100 || !bytes.Equal(got[0].Data, tagged) {
		t.Errorf("tagged GARP on the wire:%s\nwant vlan 100 %x", describe(got), tagged)
	}

	for _, c := range []struct {
		form  string
		r     proctest.Result
		lines []sniffLine
	}{
		{"--json", jr, parseJSON(t, jr.Stdout)},
		{"plain", pr, parsePlain(t, pr.Stdout)},
	} {
		if c.r.Code != 0 || c.r.Stderr != "" {
			t.Errorf("sniff %s ended with exit %d, stderr %q; want 0 and nothing", c.form, c.r.Code, c.r.Stderr)
		}
		want := []sniffLine{
			{"sw0", "-", "rarp", guestMAC, "-"},
			{"sw0", "-", "garp-request", guestMAC, "10.0.0.10"},
			{"sw0", "-", "unsolicited-na", guestMAC, "fd00::10"},
		}
		got := byMAC(c.lines, guestMAC)
		if len(got) != 15 {
			t.Errorf("sniff %s: %d lines for %s, want 15: %v", c.form, len(got), guestMAC, got)
		}
		for i, g := range got {
			if w := want[i%3]; g != w {
				t.Errorf("sniff %s: line %d for %s = %v, want %v", c.form, i+1, guestMAC, g, w)
			}
		}
		leg := byMAC(c.lines, legacyMAC)
		if len(leg) == 0 {
			t.Errorf("sniff %s: no line for the legacy RARP", c.form)
		}
		for _, g := range leg {
			if w := (sniffLine{"sw0", "-", "rarp-0835", legacyMAC, "-"}); g != w {
				t.Errorf("sniff %s: legacy RARP line %v, want %v", c.form, g, w)
			}
		}
		tag := byMAC(c.lines, taggedMAC)
		if w := (sniffLine{"sw0", "100", "garp-request", taggedMAC, taggedIP}); len(tag) != 1 || tag[0] != w {
			t.Errorf("sniff %s: tagged GARP lines %v, want [%v]", c.form, tag, w)
		}
		if n := len(got) + len(leg) + len(tag); n != len(c.lines) {
			t.Errorf("sniff %s printed %d lines, %d of them unexplained: %v", c.form, len(c.lines), len(c.lines)-n, c.lines)
		}
	}
}
