//go:build linux

package qemu_test

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/proctest"
)

// fdbPort returns the port bridge br forwards mac to, "" when it has no
// learned entry.
func fdbPort(t *testing.T, ns *netlab.NS, br, mac string) string {
	t.Helper()
	out := ns.MustRun(t, "bridge", "-j", "fdb", "show", "br", br)
	var entries []struct {
		MAC    string `json:"mac"`
		Ifname string `json:"ifname"`
		Master string `json:"master"`
		State  string `json:"state"`
	}
	if err := json.Unmarshal([]byte(out), &entries); err != nil {
		t.Fatalf("[%s] bridge -j fdb show: %v: %s", ns.Name, err, out)
	}
	for _, e := range entries {
		// "self" entries belong to the port device, not the bridge.
		if e.MAC == strings.ToLower(mac) && e.Master == br && e.State != "permanent" {
			return e.Ifname
		}
	}
	return ""
}

// waitFDB polls until br forwards mac to want, and returns the last answer.
func waitFDB(t *testing.T, ns *netlab.NS, br, mac, want string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := fdbPort(t, ns, br, mac)
		if got == want || time.Now().After(deadline) {
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// portForwarding reports whether a bridge port has carrier and forwards:
// what the daemon calls ready.
func portForwarding(t *testing.T, ns *netlab.NS, dev string) bool {
	t.Helper()
	var links []struct {
		Flags     []string `json:"flags"`
		Operstate string   `json:"operstate"`
	}
	out := ns.MustRun(t, "ip", "-j", "link", "show", "dev", dev)
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		t.Fatalf("[%s] ip -j link show %s: %v: %s", ns.Name, dev, err, out)
	}
	if !slices.Contains(links[0].Flags, "LOWER_UP") || links[0].Operstate != "UP" {
		return false
	}
	var ports []struct {
		State string `json:"state"`
	}
	out = ns.MustRun(t, "bridge", "-j", "link", "show", "dev", dev)
	if err := json.Unmarshal([]byte(out), &ports); err != nil || len(ports) != 1 {
		t.Fatalf("[%s] bridge -j link show %s: %v: %s", ns.Name, dev, err, out)
	}
	return ports[0].State == "forwarding"
}

func waitForwarding(t *testing.T, ns *netlab.NS, dev string, timeout time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !portForwarding(t, ns, dev) {
		if time.Now().After(deadline) {
			t.Fatalf("[%s] %s has no carrier or does not forward after %v:\n%s", ns.Name, dev, timeout,
				ns.MustRun(t, "ip", "link", "show", "dev", dev))
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Now()
}

// daemonProc is `announce daemon` running inside a host's namespace.
type daemonProc struct{ *proctest.Proc }

// startDaemon runs the real binary with a JSON log and waits until it has
// taken its initial view of the links and watches for changes.
func startDaemon(t *testing.T, ns *netlab.NS, bin, cfg string) *daemonProc {
	t.Helper()
	d := &daemonProc{proctest.Start(t, ns, bin, "--log-format", "json", "--log-level", "debug", "daemon", "--config", cfg, "--metrics-listen", "off")}
	t.Cleanup(func() {
		if errors.Is(d.Stop(5*time.Second), proctest.ErrKilled) {
			t.Errorf("daemon ignored SIGTERM for 5 s")
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.Output())
		}
	})
	if len(d.WaitLogs(20*time.Second, 1, proctest.Msg("watching"))) == 0 {
		select {
		case <-d.Exited():
			t.Fatalf("daemon exited at start:\n%s", d.Output())
		default:
			t.Fatalf("daemon not watching after 20 s:\n%s", d.Output())
		}
	}
	return d
}

// bursts returns the daemon's "burst" log records.
func (d *daemonProc) bursts() []map[string]any {
	var out []map[string]any
	for _, l := range d.Logs(proctest.Msg("burst")) {
		out = append(out, l.Fields)
	}
	return out
}
