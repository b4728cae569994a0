//go:build linux

package ovs_test

import (
	"strings"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/internal/proctest"
)

// The one-shot run by a hook at vif plug time, before the guest runs:
// --wait-ready holds the burst until OVS has numbered the port and the VIF
// has carrier, so nothing leaves the trunk while the guest is still on the
// source host, and the whole burst leaves after, tagged with the VIF's VLAN.
func TestWaitReadyOVSCarrier(t *testing.T) {
	bin := requireE2E(t)
	h := newHost(t)
	ofport := h.addVif("vif1.0", 5, mac1, false)
	cap := startCapture(t, h.sw, "sw0")

	o := proctest.Start(t, h.ns, bin, "--vif", "vif1.0", "--wait-ready=10s", "--ip", "10.0.0.10",
		"--ovsdb", h.ovs.DBAddr(), "--config", h.config(""))
	time.Sleep(time.Second)
	select {
	case <-o.Exited():
		t.Fatalf("announce exited before the VIF had carrier; stderr:\n%s", o.Stderr())
	default:
	}
	if fs := cap.from(mac1); len(fs) != 0 {
		t.Fatalf("%d frames from the guest MAC left the trunk before carrier", len(fs))
	}

	up := h.carrierUp("vif1.0")
	r := o.Wait(t, 10*time.Second)
	if r.Code != 0 {
		t.Fatalf("exit %d, want 0; stderr:\n%s", r.Code, r.Stderr)
	}
	fs := cap.waitFrom(mac1, 10, 5*time.Second)
	if n := len(rarps(fs)); n != 5 {
		t.Errorf("%d RARPs on the trunk, want 5 (one QEMU-schedule burst)", n)
	}
	if len(fs) != 10 {
		t.Errorf("%d frames from the guest MAC, want 10 (5 rounds of RARP and GARP)", len(fs))
		for _, f := range fs {
			t.Logf("  %+.3f ms after carrier: ethertype %#04x", float64(f.At.Sub(up))/1e6, f.EtherType())
		}
		t.Logf("announce stderr:\n%s", r.Stderr)
	}
	for i, f := range fs {
		if f.At.Before(up) {
			t.Errorf("frame %d left %v before carrier", i, up.Sub(f.At))
		}
		if f.VLAN != 5 {
			t.Errorf("frame %d left the trunk with VLAN %d, want 5", i, f.VLAN)
		}
	}
	if len(fs) > 0 {
		t.Logf("first frame on the trunk %v after carrier", fs[0].At.Sub(up))
	}
	if out := h.fdb(); !fdbHas(out, ofport, 5, mac1) {
		t.Errorf("OVS FDB does not show %s on ofport %d VLAN 5:\n%s", mac1, ofport, out)
	}
}

// A VIF whose guest never comes: the one-shot gives up at the deadline
// with exit 1 and a one-line error naming the port, and sends nothing.
func TestWaitReadyOVSNoCarrier(t *testing.T) {
	bin := requireE2E(t)
	h := newHost(t)
	h.addVif("vif1.0", 5, mac1, false)
	cap := startCapture(t, h.sw, "sw0")

	r := proctest.Start(t, h.ns, bin, "--vif", "vif1.0", "--wait-ready=2s",
		"--ovsdb", h.ovs.DBAddr(), "--config", h.config("")).Wait(t, 10*time.Second)
	code, took, stderr := r.Code, r.Took, r.Stderr
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, stderr)
	}
	if took < 2*time.Second {
		t.Errorf("gave up after %v, before the 2s deadline", took)
	}
	var errLines []string
	for _, l := range strings.Split(strings.TrimSpace(stderr), "\n") {
		if strings.HasPrefix(l, "announce: ") {
			errLines = append(errLines, l)
		}
	}
	if len(errLines) != 1 || !strings.Contains(errLines[0], "vif1.0") {
		t.Errorf("want one `announce: ` error line naming vif1.0; stderr:\n%s", stderr)
	}
	time.Sleep(300 * time.Millisecond)
	if fs := cap.from(mac1); len(fs) != 0 {
		t.Errorf("%d frames from the guest MAC left the trunk for a port that never got ready", len(fs))
	}
}
