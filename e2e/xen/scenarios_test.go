//go:build linux

package xen_test

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/announce/sniff"
	"github.com/selfannounce/selfannounce/internal/lab"
	"github.com/selfannounce/selfannounce/internal/proctest"
	"github.com/selfannounce/selfannounce/internal/vm"
	"github.com/selfannounce/selfannounce/internal/wiretest"
	"github.com/selfannounce/selfannounce/internal/xenhost"
)

func netParseMAC(s string) (net.HardwareAddr, error) { return net.ParseMAC(s) }

// daemonConfig: the daemon in dom0 finds the guest through xenstored alone;
// no libvirt, no OVS, no metrics endpoint here.
const daemonConfig = `libvirt: {socket: "off"}
ovs: {db: "off"}
metrics: {listen: ""}
`

// Results is what the Xen package measured, written to
// $VM_RESULTS/xen-results.json for docs/performance.md.
type Results struct {
	WithDaemon, WithoutAgent, Hook lab.Report
	// Carrier to first frame on the destination's switch port.
	DaemonLatencyNs, FloorLatencyNs time.Duration
	DaemonOwnLatencyNs              time.Duration // the daemon's "latency" log field
	// Scenario 3, the HVM guest without PV drivers.
	HVMWithDaemon, HVMWithoutAgent lab.Report
	HVMDeviceModelFrames           int           // frames with the guest MAC without an agent
	HVMStartToFirstRARPNs          time.Duration // xl's rename to the first RARP on the switch
	Redos                          int
}

// TestInXen is every scenario on one dom0, in order: the daemon migration
// (scenario 1, with the latency floor: scenario 5), the same migration back
// without an agent (scenario 1's baseline), the xl hook migration (scenario
// 2) and identity from the real xenstored (scenario 4) on the PVH guest;
// then the HVM guest without PV drivers, without an agent and with the
// daemon (scenario 3).
func TestInXen(t *testing.T) {
	x := newHost(t)
	var res Results
	defer func() {
		res.Redos = x.Redos
		b, _ := json.MarshalIndent(res, "", "  ")
		if d := os.Getenv("VM_RESULTS"); d != "" {
			os.WriteFile(filepath.Join(d, "xen-results.json"), b, 0o644)
		}
		t.Logf("results: %s", b)
		t.Logf("emulator redos in all: %d", x.Redos)
	}()

	t.Run("DaemonMigration", func(t *testing.T) {
		cfg := writeFile(t, x.Dir, "daemon.yaml", daemonConfig)
		d := startDaemon(t, x, cfg)
		mv, c := x.move(t, x.other(), "announce daemon", true)
		res.WithDaemon = mv.Report
		lat := x.checkArrival(t, mv, c)
		bursts := d.WaitLogs(10*time.Second, 1, func(l proctest.Log) bool {
			return l.Msg == "burst" && l.Str("port") == mv.Vif
		})
		if len(bursts) == 0 {
			t.Errorf("the daemon logged no burst for %s:\n%s", mv.Vif, d.Output())
		} else {
			b := bursts[0]
			if b.Str("source") != "xenstore" || b.Str("mac") != lab.GuestMAC {
				t.Errorf("burst for %s: source %q mac %q, want the MAC %s from xenstore", mv.Vif, b.Str("source"), b.Str("mac"), lab.GuestMAC)
			}
			res.DaemonOwnLatencyNs = time.Duration(b.Num("latency") * 1e9)
		}
		// Scenario 5: carrier to first frame, the daemon beside the floor.
		res.DaemonLatencyNs = lat
		for _, f := range c.Frames(wiretest.From(xenhost.FloorMAC)) {
			res.FloorLatencyNs = f.At.Sub(mv.Carrier)
			break
		}
		ratio := 0.0
		if res.FloorLatencyNs > 0 {
			ratio = float64(lat) / float64(res.FloorLatencyNs)
		}
		t.Logf("latency on real netback (TCG): carrier→first RARP %v, floor (netlink + one AF_PACKET send) %v, ratio %.1f; daemon's own latency field %v",
			lat.Round(time.Microsecond), res.FloorLatencyNs.Round(time.Microsecond), ratio, res.DaemonOwnLatencyNs.Round(time.Microsecond))
		if res.FloorLatencyNs == 0 {
			t.Errorf("the floor's frame never reached the switch")
		}
		// Where the daemon's time goes: its records around the arrival.
		for _, l := range d.Logs(nil) {
			if !l.At.IsZero() && l.At.After(mv.Carrier.Add(-2*time.Second)) && l.At.Before(mv.Carrier.Add(3*time.Second)) {
				t.Logf("daemon %+.3fs %s", l.At.Sub(mv.Carrier).Seconds(), l.Raw)
			}
		}
		if err := d.Stop(10 * time.Second); err != nil {
			t.Errorf("daemon stop: %v\n%s", err, d.Output())
		}
	})

	t.Run("NoAgentMigration", func(t *testing.T) {
		from := xenhost.Port(x.Bridge)
		mv, c := x.move(t, x.other(), "without agent", false)
		res.WithoutAgent = mv.Report
		// The guest is really silent: nothing moved the switch.
		for _, f := range guestFrames(c) {
			t.Errorf("the silent guest sent a frame (ethertype %#04x) after migrating", f.EtherType())
		}
		if p, _ := x.l.FDBPort(x.l.Switch, "sw", lab.GuestMAC); p != from {
			t.Errorf("without an agent the switch should still send the guest's traffic to %s (stale), got %q", from, p)
		}
		if w := res.WithDaemon; w.Sent > 0 {
			t.Logf("lost pings at %v: without agent %d of %d, with the daemon %d of %d (ratio %.1f)",
				xenhost.PingInterval, mv.Report.Lost, mv.Report.Sent, w.Lost, w.Sent, float64(mv.Report.Lost)/max(1, float64(w.Lost)))
		}
	})

	t.Run("HookMigration", func(t *testing.T) {
		installHook(t)
		mv, c := x.move(t, x.other(), "xl hook", false)
		res.Hook = mv.Report
		x.checkArrival(t, mv, c)
		checkHookTimes(t, mv.Vif, mv.Carrier)
	})

	t.Run("Identity", func(t *testing.T) {
		identity(t, x)
	})

	// Last: it replaces the PVH guest.
	t.Run("HVM", func(t *testing.T) {
		hvmScenario(t, x, &res)
	})
}

// hookLog is where the timing hooks around the packaged one write.
const hookLog = "/run/sa-hook-times"

// installHook puts the packaged hook where vif-bridge sources it, between
// two hooks that stamp the time, and the announce binary on the hotplug
// scripts' PATH. The overlay root of dom0 is writable.
func installHook(t *testing.T) {
	t.Helper()
	dir := "/etc/xen/scripts/vif-post.d"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(filepath.Join(vm.GuestRunDir, guestHook))
	if err != nil {
		t.Fatal(err)
	}
	stamp := func(what string) string {
		return fmt.Sprintf("echo \"${dev:-} ${command:-} %s $(date +%%s.%%N)\" >> %s\n", what, hookLog)
	}
	for name, body := range map[string]string{
		"00-sa-start.hook":  stamp("start"),
		"selfannounce.hook": string(src),
		"zz-sa-end.hook":    stamp("end"),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Remove("/usr/sbin/announce")
	if err := os.Symlink(announceBin(t), "/usr/sbin/announce"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, n := range []string{"00-sa-start.hook", "selfannounce.hook", "zz-sa-end.hook"} {
			os.Remove(filepath.Join(dir, n))
		}
		os.Remove("/usr/sbin/announce")
	})
}

// hookBudget bounds what the hook may add to a vif's hotplug: half of
// libxl's fixed 40 s hotplug timeout, which kills the whole script. Under
// TCG on a loaded host a fork alone can take seconds, so the hook's real
// promise is checked by order: it hands the port to a detached announce and
// returns before the vif even has carrier, never waiting for the
// announcement.
const hookBudget = 20 * time.Second

// checkHookTimes asserts the hook ran for vif on its online event and
// returned before the vif's carrier, and within its budget every time it
// ran.
func checkHookTimes(t *testing.T, vif string, carrier time.Time) {
	t.Helper()
	b, err := os.ReadFile(hookLog)
	if err != nil {
		t.Fatalf("the hooks never ran: %v", err)
	}
	start := map[string]float64{}
	ran := false
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) != 4 {
			continue
		}
		ts, _ := strconv.ParseFloat(f[3], 64)
		key := f[0] + " " + f[1]
		switch f[2] {
		case "start":
			start[key] = ts
		case "end":
			took := time.Duration((ts - start[key]) * 1e9)
			t.Logf("hook for %s took %v", key, took.Round(time.Millisecond))
			if took > hookBudget {
				t.Errorf("the hook delayed the hotplug of %s by %v, budget %v", key, took, hookBudget)
			}
			if f[0] == vif && f[1] == "online" {
				ran = true
				if end := time.Unix(0, int64(ts*1e9)); !carrier.IsZero() && end.After(carrier) {
					t.Errorf("the hook for %s online returned %v after the vif's carrier: it waited for the arrival", vif, end.Sub(carrier))
				}
			}
		}
	}
	if !ran {
		t.Errorf("the hook did not run (or did not return) for %s online:\n%s", vif, b)
	}
}

// Guest-written values: untrusted.
const (
	guestWrittenIP  = "10.66.7.9"
	guestWrittenMAC = "00:16:3e:66:66:66"
)

// identity: `announce --domid` and `--vm-uuid` find the guest in the real
// xenstored and announce dom0's MAC and address; what the guest writes
// into its own tree is announced only with trust-guest-ips.
func identity(t *testing.T, x *host) {
	dom := fmt.Sprintf("/local/domain/%d", x.DomID)
	// The guest's own writes, made as the guest: nodes owned by its domid.
	for p, v := range map[string]string{
		dom + "/attr/vif/0/ipv4/0": guestWrittenIP,
		dom + "/device/vif/0/mac":  guestWrittenMAC,
	} {
		if out, err := exec.Command("xenstore-write", p, v).CombinedOutput(); err != nil {
			t.Fatalf("xenstore-write %s: %v: %s", p, err, out)
		}
		if out, err := exec.Command("xenstore-chmod", p, fmt.Sprintf("b%d", x.DomID)).CombinedOutput(); err != nil {
			t.Fatalf("xenstore-chmod %s: %v: %s", p, err, out)
		}
	}
	vmPath, err := exec.Command("xenstore-read", dom+"/vm").Output()
	if err != nil {
		t.Fatalf("xenstore-read %s/vm: %v", dom, err)
	}
	uuid := strings.TrimPrefix(strings.TrimSpace(string(vmPath)), "/vm/")
	plain := writeFile(t, x.Dir, "plain.yaml", "{}\n")
	trusting := writeFile(t, x.Dir, "trusting.yaml", "trust-guest-ips: true\n")
	port := xenhost.Port(x.Bridge)
	for _, tc := range []struct {
		name    string
		args    []string
		trusted bool
	}{
		{"domid", []string{"--domid", strconv.Itoa(x.DomID), "--config", plain}, false},
		{"vm-uuid", []string{"--vm-uuid", uuid, "--config", plain}, false},
		{"trust-guest-ips", []string{"--domid", strconv.Itoa(x.DomID), "--config", trusting}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := wiretest.Start(t, x.l.Switch, port, wiretest.In)
			p := proctest.Start(t, x.l.HostA, announceBin(t), append([]string{"--log-format", "json"}, tc.args...)...)
			r := p.Wait(t, 3*time.Minute)
			frames := c.Stop(t)
			if r.Code != 0 {
				t.Fatalf("announce %s: exit %d:\n%s", strings.Join(tc.args, " "), r.Code, r.Output)
			}
			n := map[string]int{}
			for _, f := range frames {
				a, ok := f.Announcement()
				if !ok {
					continue
				}
				switch {
				case a.MAC.String() == guestWrittenMAC:
					n["guest mac"]++
				case a.Kind == sniff.RARP && a.MAC.String() == lab.GuestMAC:
					n["rarp"]++
				case a.Kind == sniff.GARPRequest && a.IP.String() == lab.GuestIP:
					n["garp dom0"]++
				case a.Kind == sniff.GARPRequest && a.IP.String() == guestWrittenIP:
					n["garp guest"]++
				}
			}
			want := map[string]int{"rarp": 5, "garp dom0": 5}
			if tc.trusted {
				want["garp guest"] = 5
			}
			for _, k := range []string{"rarp", "garp dom0", "garp guest", "guest mac"} {
				if n[k] != want[k] {
					t.Errorf("%s: %d frames on the switch, want %d", k, n[k], want[k])
				}
			}
			if t.Failed() {
				t.Logf("announce output:\n%s", r.Output)
			}
		})
	}
}
