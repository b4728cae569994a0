//go:build linux

package qemu_test

import (
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/internal/netlab"
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
type daemonProc struct {
	log      *lockedBuffer
	watching chan struct{}
	exited   chan struct{}
}

// watchWriter keeps the daemon's log and says when it is watching.
type watchWriter struct {
	*lockedBuffer
	once     sync.Once
	watching chan struct{}
}

func (w *watchWriter) Write(p []byte) (int, error) {
	n, err := w.lockedBuffer.Write(p)
	if strings.Contains(w.lockedBuffer.String(), `"msg":"watching"`) {
		w.once.Do(func() { close(w.watching) })
	}
	return n, err
}

// startDaemon runs the real binary with a JSON log and waits until it has
// taken its initial view of the links and watches for changes.
func startDaemon(t *testing.T, ns *netlab.NS, bin, cfg string) *daemonProc {
	t.Helper()
	d := &daemonProc{log: &lockedBuffer{}, watching: make(chan struct{})}
	cmd := ns.Cmd(bin, "--log-format", "json", "--log-level", "debug", "daemon", "--config", cfg, "--metrics-listen", "off")
	w := &watchWriter{lockedBuffer: d.log, watching: d.watching}
	cmd.Stdout, cmd.Stderr = w, w
	exited, err := startPinned(cmd)
	if err != nil {
		t.Fatalf("start daemon: %v", err)
	}
	d.exited = exited
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-d.exited
			t.Errorf("daemon ignored SIGTERM for 5 s")
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.log)
		}
	})
	select {
	case <-d.watching:
	case <-d.exited:
		t.Fatalf("daemon exited at start:\n%s", d.log)
	case <-time.After(20 * time.Second):
		t.Fatalf("daemon not watching after 20 s:\n%s", d.log)
	}
	return d
}

// bursts returns the daemon's "burst" log records.
func (d *daemonProc) bursts() []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(d.log.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "burst" {
			out = append(out, rec)
		}
	}
	return out
}
