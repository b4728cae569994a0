//go:build linux

package ovs_test

import (
	"bytes"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// oneShot is a running `announce --vif ... --wait-ready` in the OVS host's
// namespace.
type oneShot struct {
	cmd    *exec.Cmd
	stderr bytes.Buffer
	done   chan struct{}
	err    error
}

func startOneShot(t *testing.T, bin string, h *host, args ...string) *oneShot {
	t.Helper()
	o := &oneShot{done: make(chan struct{})}
	o.cmd = h.ns.Cmd(bin, args...)
	o.cmd.Stderr = &o.stderr
	if err := o.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { o.err = o.cmd.Wait(); close(o.done) }()
	t.Cleanup(func() {
		select {
		case <-o.done:
		default:
			o.cmd.Process.Kill()
			<-o.done
		}
	})
	return o
}

func (o *oneShot) exited() bool {
	select {
	case <-o.done:
		return true
	default:
		return false
	}
}

// wait returns the exit code, failing the test if the process outlives
// timeout.
func (o *oneShot) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-o.done:
	case <-time.After(timeout):
		t.Fatalf("announce still running after %v; stderr:\n%s", timeout, o.stderr.String())
	}
	var ee *exec.ExitError
	switch {
	case o.err == nil:
		return 0
	case errors.As(o.err, &ee):
		return ee.ExitCode()
	default:
		t.Fatalf("announce: %v", o.err)
		return -1
	}
}

// The one-shot run by a hook at vif plug time, before the guest runs:
// --wait-ready holds the burst until OVS has numbered the port and the VIF
// has carrier, so nothing leaves the trunk while the guest is still on the
// source host, and the whole burst leaves after, tagged with the VIF's VLAN.
func TestWaitReadyOVSCarrier(t *testing.T) {
	bin := requireE2E(t)
	h := newHost(t)
	ofport := h.addVif("vif1.0", 5, mac1, false)
	cap := startCapture(t, h.sw, "sw0")

	o := startOneShot(t, bin, h, "--vif", "vif1.0", "--wait-ready=10s", "--ip", "10.0.0.10",
		"--ovsdb", h.ovs.DBAddr(), "--config", h.config(""))
	time.Sleep(time.Second)
	if o.exited() {
		t.Fatalf("announce exited before the VIF had carrier; stderr:\n%s", o.stderr.String())
	}
	if fs := cap.from(mac1); len(fs) != 0 {
		t.Fatalf("%d frames from the guest MAC left the trunk before carrier", len(fs))
	}

	up := h.carrierUp("vif1.0")
	if code := o.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("exit %d, want 0; stderr:\n%s", code, o.stderr.String())
	}
	fs := cap.waitFrom(mac1, 10, 2*time.Second)
	if n := len(rarps(fs)); n != 5 {
		t.Errorf("%d RARPs on the trunk, want 5 (one QEMU-schedule burst)", n)
	}
	if len(fs) != 10 {
		t.Errorf("%d frames from the guest MAC, want 10 (5 rounds of RARP and GARP)", len(fs))
	}
	for i, f := range fs {
		if f.at.Before(up) {
			t.Errorf("frame %d left %v before carrier", i, up.Sub(f.at))
		}
		if f.vlan != 5 {
			t.Errorf("frame %d left the trunk with VLAN %d, want 5", i, f.vlan)
		}
	}
	if len(fs) > 0 {
		t.Logf("first frame on the trunk %v after carrier", fs[0].at.Sub(up))
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

	start := time.Now()
	o := startOneShot(t, bin, h, "--vif", "vif1.0", "--wait-ready=2s",
		"--ovsdb", h.ovs.DBAddr(), "--config", h.config(""))
	code := o.wait(t, 10*time.Second)
	took := time.Since(start)
	stderr := o.stderr.String()
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
