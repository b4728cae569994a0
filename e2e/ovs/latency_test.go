//go:build linux

package ovs_test

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Markers of the section TestOVSReactionLatency rewrites in
// docs/performance.md when SELFANNOUNCE_OVS_DOC names that file.
const (
	docBegin = "<!-- ovs:begin -->"
	docEnd   = "<!-- ovs:end -->"
)

// TestOVSReactionLatency measures, on a VIF of a private OVS (userspace
// datapath), the time from carrier to the first announcement frame on the
// wire beyond the trunk, with kernel timestamps on the far side, and beside
// it, in the same run, when OVS's own link_state=up reached the daemon
// through OVSDB. Every carrier must give a frame, after the carrier. How
// fast is measured and logged, not judged (make bench and the doc below
// are where speed is reported); what is judged is the order that shows
// the daemon acts on the kernel's carrier and not on OVSDB: a daemon that
// waited for link_state would put every frame after its OVSDB report, so
// at least a third of the reps must have the frame on the wire first. Set
// SELFANNOUNCE_OVS_REPS to change the repetitions (default 30) and
// SELFANNOUNCE_OVS_DOC to a markdown file to rewrite its OVS section:
//
//	sudo SELFANNOUNCE_OVS_DOC=$PWD/docs/performance.md go test -count=1 -v -run TestOVSReactionLatency ./e2e/ovs/
func TestOVSReactionLatency(t *testing.T) {
	bin := requireE2E(t)
	reps := 30
	if s := os.Getenv("SELFANNOUNCE_OVS_REPS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("SELFANNOUNCE_OVS_REPS=%q: want a positive number", s)
		}
		reps = n
	}
	h := newHost(t)
	h.addVif("vif1.0", 5, mac1, false)
	cap := startCapture(t, h.sw, "sw0")
	// One frame per arrival and no flap guard: every carrier is measured.
	d := startDaemon(t, bin, h.ns, "--config", h.config("schedule: {rounds: 1}\nflap: {holddown: 0s}\n"), "--ovsdb", h.ovs.DBAddr())

	var wire, ovsdb []time.Duration
	paired, frameFirst := 0, 0
	for i := 0; i < reps; i++ {
		before := len(cap.from(mac1))
		events := d.count(portEvent("vif1.0", "changed"))
		up := h.carrierUp("vif1.0")
		fs := cap.waitFrom(mac1, before+1, 10*time.Second)
		if len(fs) <= before {
			t.Fatalf("rep %d: no frame within 10 s of carrier", i)
		}
		if fs[before].At.Before(up) {
			t.Errorf("rep %d: frame on the wire %v before the carrier was raised", i, up.Sub(fs[before].At))
		}
		wire = append(wire, fs[before].At.Sub(up))
		// When OVS itself reported the carrier (link_state) to OVSDB, as
		// the daemon's log stamps it: what readiness from OVSDB alone
		// would cost.
		linkUp := func(m map[string]any) bool {
			return portEvent("vif1.0", "changed")(m) && strings.Contains(m["event"].(string), "link=true")
		}
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if d.count(portEvent("vif1.0", "changed")) > events {
				if at, ok := d.lastTS(linkUp); ok && at.After(up) {
					ovsdb = append(ovsdb, at.Sub(up))
					paired++
					if fs[before].At.Before(at) {
						frameFirst++
					}
					break
				}
			}
		}
		h.carrierDown("vif1.0")
		time.Sleep(150 * time.Millisecond)
	}
	w, o := stats(wire), stats(ovsdb)
	t.Logf("carrier → first frame on the wire (%d reps): %s", len(wire), w)
	t.Logf("carrier → OVSDB link_state=up seen by the daemon (%d reps): %s", len(ovsdb), o)
	t.Logf("the frame was on the wire before OVSDB's link_state=up reached the daemon in %d of %d reps", frameFirst, paired)
	if paired == 0 {
		t.Errorf("OVSDB never reported link_state=up to the daemon in %d reps", reps)
	} else if 3*frameFirst < paired {
		t.Errorf("the frame beat OVSDB's link_state=up to the daemon in only %d of %d reps: the daemon looks to wait for OVSDB, not the kernel's carrier", frameFirst, paired)
	}
	if doc := os.Getenv("SELFANNOUNCE_OVS_DOC"); doc != "" {
		if err := writeDoc(doc, reps, w, o); err != nil {
			t.Fatal(err)
		}
	}
}

func (d daemonProc) lastTS(pred func(map[string]any) bool) (time.Time, bool) {
	ls := d.Logs(record(pred))
	if len(ls) == 0 {
		return time.Time{}, false
	}
	at := ls[len(ls)-1].At
	return at, !at.IsZero()
}

func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))]
}

type summary struct{ p50, p90, p99, max time.Duration }

func stats(ds []time.Duration) summary {
	return summary{percentile(ds, 50), percentile(ds, 90), percentile(ds, 99), percentile(ds, 100)}
}

func (s summary) String() string {
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  max %s", ms(s.p50), ms(s.p90), ms(s.p99), ms(s.max))
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }

func writeDoc(path string, reps int, wire, ovsdb summary) error {
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	var sb strings.Builder
	sb.WriteString(docBegin + "\n")
	sb.WriteString("## OVS reaction latency\n\n")
	fmt.Fprintf(&sb, "Measured %s by `TestOVSReactionLatency` (e2e/ovs/latency_test.go):\n\n", time.Now().UTC().Format("2006-01-02"))
	sb.WriteString("    sudo SELFANNOUNCE_OVS_DOC=$PWD/docs/performance.md go test -count=1 -v -run TestOVSReactionLatency ./e2e/ovs/\n\n")
	fmt.Fprintf(&sb, "A private Open vSwitch (userspace datapath, `datapath_type=netdev`) in a network namespace; "+
		"a Xen-style VIF on access VLAN 5 with `external_ids:attached-mac`; the daemon on carrier trigger with one round per "+
		"arrival. Carrier is raised %d times by bringing the guest's end of the VIF's veth up (timestamp just before the ioctl); "+
		"the first frame is stamped by the kernel on the far side of the trunk, after OVS has tagged it.\n\n", reps)
	sb.WriteString("| path | p50 | p90 | p99 | max |\n|---|---|---|---|---|\n")
	fmt.Fprintf(&sb, "| carrier → first frame on the trunk (packet-out, in_port = VIF, NORMAL) | %s | %s | %s | %s |\n", ms(wire.p50), ms(wire.p90), ms(wire.p99), ms(wire.max))
	fmt.Fprintf(&sb, "| carrier → OVSDB reports `link_state=up` to the daemon | %s | %s | %s | %s |\n\n", ms(ovsdb.p50), ms(ovsdb.p90), ms(ovsdb.p99), ms(ovsdb.max))
	sb.WriteString("The second row is why the daemon takes an OVS port's carrier and admin state from netlink when the port " +
		"has a kernel netdev: OVS copies `link_state` from the same kernel flag, but only after its main loop runs and an " +
		"OVSDB transaction completes; in the lab's OVS migration (`selfannounce-lab --ovs`) waiting for it " +
		"cost a second lost ping at 10 ms. Bridge, VLAN, ofport and attached-mac still come " +
		"from OVSDB; ports without a netdev (DPDK) fall back to `link_state`. The OpenFlow session to each bridge is opened " +
		"when its first VM port appears, so no handshake delays a burst.\n")
	sb.WriteString(docEnd + "\n")
	s := string(b)
	i, j := strings.Index(s, docBegin), strings.Index(s, docEnd)
	if i >= 0 && j > i {
		s = s[:i] + sb.String() + strings.TrimPrefix(s[j+len(docEnd):], "\n")
	} else {
		if s != "" && !strings.HasSuffix(s, "\n") {
			s += "\n"
		}
		if s != "" {
			s += "\n"
		}
		s += sb.String()
	}
	return os.WriteFile(path, []byte(s), 0o644)
}
