//go:build linux

// Package systemd_test installs the project's .deb and .rpm in a Debian
// kernel VM booted with systemd as PID 1, and runs the packaged, hardened
// unit there as an operator would: systemctl start, reload, stop, the
// watchdog, systemd-analyze security. Every sandbox directive is judged by a
// feature that needs what it restricts, seen on the wire or in kernel state:
// the xenstored socket (the guest MAC of a silent VM comes only from there),
// packet sockets (the announcement on the switch), the metrics endpoint on
// 127.0.0.1, the libvirt socket and Open vSwitch's OVSDB and OpenFlow sockets.
//
// One boot runs every inner test (TestInVM...), in source order.
package systemd_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/announce/doctor"
	"github.com/selfannounce/selfannounce/announce/xenstore/xenstoretest"
	"github.com/selfannounce/selfannounce/internal/lab"
	"github.com/selfannounce/selfannounce/internal/libvirttest"
	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/ovstest"
	"github.com/selfannounce/selfannounce/internal/testenv"
	"github.com/selfannounce/selfannounce/internal/vm"
	"github.com/selfannounce/selfannounce/internal/wiretest"
)

const (
	envDeb     = "SELFANNOUNCE_VM_DEB"
	envRPM     = "SELFANNOUNCE_VM_RPM"
	unit       = "selfannounce.service"
	config     = "/etc/selfannounce/config.yaml"
	metricsURL = "http://127.0.0.1:9474/metrics"
	// The daemon's default xenstore path; /var/run is /run on Debian.
	xsSocket = "/run/xenstored/socket"
	// EnvPackages is the directory `make packages` wrote (as in ./packaging).
	envPackages = "SELFANNOUNCE_PACKAGES"
)

// TestSystemd is the host side: it finds or builds the packages, boots one
// VM with systemd as init and reports the inner tests.
func TestSystemd(t *testing.T) {
	if vm.Inside() {
		t.Skip("the host wrapper")
	}
	testenv.RequireRoot(t)
	vm.Require(t)
	deb, rpm := packages(t)
	vm.RunTests(t, vm.Options{
		Name: "systemd", Init: vm.InitSystemd, MemMB: 2048, CPUs: 2,
		Copy: map[string]string{"pkg/selfannounce.deb": deb, "pkg/selfannounce.rpm": rpm},
		Env: map[string]string{
			envDeb: vm.GuestRunDir + "/pkg/selfannounce.deb",
			envRPM: vm.GuestRunDir + "/pkg/selfannounce.rpm",
		},
		Timeout: 20 * time.Minute,
	}, "^TestInVM")
}

// packages returns the .deb and .rpm: those in $SELFANNOUNCE_PACKAGES (what
// `make test` built), or freshly built with `make packages`.
func packages(t *testing.T) (deb, rpm string) {
	t.Helper()
	dir := os.Getenv(envPackages)
	if dir == "" {
		root, err := filepath.Abs("../..")
		if err != nil {
			t.Fatal(err)
		}
		dir = t.TempDir()
		cmd := exec.Command("make", "-C", root, "packages", "PKG_DIST="+dir, "PKG_STAGE="+filepath.Join(dir, ".stage"))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("make packages: %v\n%s", err, out)
		}
	}
	find := func(pattern string) string {
		m, _ := filepath.Glob(filepath.Join(dir, pattern))
		if len(m) != 1 {
			t.Fatalf("%s: want exactly one %s, found %d", dir, pattern, len(m))
		}
		return m[0]
	}
	return find("selfannounce_*.deb"), find("selfannounce-*.rpm")
}

// --- inside the VM ---

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := runErr(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func runErr(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0")
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// show returns the unit's properties.
func show(t *testing.T, props ...string) map[string]string {
	t.Helper()
	out := run(t, "systemctl", "show", unit, "-p", strings.Join(props, ","))
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m
}

// waitState waits until the unit is in active/sub and, when notPID is not
// 0, has a main PID other than notPID; it returns that PID.
func waitState(t *testing.T, timeout time.Duration, active, sub string, notPID int) int {
	t.Helper()
	end := time.Now().Add(timeout)
	var p map[string]string
	for {
		p = show(t, "ActiveState", "SubState", "MainPID", "NRestarts", "Result")
		pid, _ := strconv.Atoi(p["MainPID"])
		if p["ActiveState"] == active && p["SubState"] == sub && (notPID == 0 || (pid != 0 && pid != notPID)) {
			return pid
		}
		if time.Now().After(end) {
			t.Fatalf("%s not %s (%s) within %v: %v\n%s", unit, active, sub, timeout, p, journal(t))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// journal is the unit's log so far, one message per line.
func journal(t *testing.T) string {
	out, _ := runErr("journalctl", "-u", unit, "--no-pager", "-o", "cat")
	return out
}

// waitJournal waits for n log lines containing s.
func waitJournal(t *testing.T, timeout time.Duration, s string, n int) {
	t.Helper()
	end := time.Now().Add(timeout)
	for strings.Count(journal(t), s) < n {
		if time.Now().After(end) {
			t.Fatalf("journal has %d lines with %q within %v, want %d:\n%s", strings.Count(journal(t), s), s, timeout, n, tail(journal(t), 40))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	ls := strings.Split(s, "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}

// scrape reads the daemon's metrics as any local Prometheus would.
func scrape(t *testing.T) doctor.Samples {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(metricsURL)
	if err != nil {
		t.Fatalf("metrics on 127.0.0.1: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	s, err := doctor.ParseMetrics(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	return s
}

func writeConfig(t *testing.T, body string) {
	t.Helper()
	if err := os.WriteFile(config, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// host is host B of the migration lab built in the VM's root network
// namespace, where systemd runs the unit, with a xenstored at its real path
// and a switch that records what host B sends it.
type host struct {
	lab  *lab.Lab
	xs   *xenstoretest.Server
	root *netlab.NS
	sw   *wiretest.Capture
	next int // next domid for an arrival
}

func newHost(t *testing.T) *host {
	t.Helper()
	testenv.RequireCommands(t, "ip", "bridge", "ping", "systemctl", "journalctl")
	if err := os.MkdirAll(filepath.Dir(xsSocket), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Remove(xsSocket)
	xs, err := xenstoretest.Listen(xsSocket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(xs.Close)
	root, err := netlab.Attach("vmroot", os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	l, err := lab.New(lab.Options{HostB: root})
	if err != nil {
		t.Fatalf("lab: %v", err)
	}
	t.Cleanup(func() {
		l.Close()
		root.Run("ip", "link", "del", lab.Bridge)
	})
	h := &host{lab: l, xs: xs, root: root, next: 3}
	// The migrated guest is domain 2 on host B: its MAC only in xenstore.
	h.xenVif(t, 2, lab.GuestMAC, lab.GuestIP)
	h.sw = wiretest.Start(t, l.Switch, "pB", wiretest.In)
	return h
}

// xenVif writes the dom0-side keys xl writes for vif<domid>.0.
func (h *host) xenVif(t *testing.T, domid int, mac, ip string) {
	t.Helper()
	be := fmt.Sprintf("/local/domain/0/backend/vif/%d/0/", domid)
	for k, v := range map[string]string{"mac": mac, "ip": ip, "bridge": lab.Bridge, "handle": "0", "state": "4", "type": "vif",
		"frontend": fmt.Sprintf("/local/domain/%d/device/vif/0", domid), "frontend-id": strconv.Itoa(domid)} {
		if err := h.xs.Write(be+k, v); err != nil {
			t.Fatal(err)
		}
	}
}

// arrive plugs a new silent guest into host B's bridge (its MAC only in
// xenstore), raises carrier, and returns the MAC.
func (h *host) arrive(t *testing.T) net.HardwareAddr {
	t.Helper()
	domid := h.next
	h.next++
	mac := net.HardwareAddr{0x00, 0x16, 0x3e, 0x5d, 0x00, byte(domid)}
	h.xenVif(t, domid, mac.String(), fmt.Sprintf("10.0.0.%d", 100+domid))
	g := netlab.TestNS(t, fmt.Sprintf("g%d", domid))
	vif := fmt.Sprintf("vif%d.0", domid)
	if _, err := h.root.Sh(fmt.Sprintf(`
		ip link add %[1]s type veth peer name eth0 netns %[2]s
		ip link set %[1]s master %[3]s up`, vif, g.Name, lab.Bridge)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.root.Run("ip", "link", "del", vif) })
	if _, err := g.Sh(fmt.Sprintf(`
		sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
		ip link set eth0 address %s arp off
		ip link set eth0 up`, mac)); err != nil {
		t.Fatal(err)
	}
	return mac
}

// rarps waits up to timeout for the switch to have received at least n
// RARPs for mac from host B, waits 2 s more for stragglers, and returns how
// many arrived.
func (h *host) rarps(t *testing.T, mac net.HardwareAddr, n int, timeout time.Duration) int {
	t.Helper()
	isRARP := func(f wiretest.Frame) bool {
		return wiretest.From(mac)(f) && f.EtherType() == 0x8035
	}
	h.sw.WaitFor(timeout, n, isRARP)
	time.Sleep(2 * time.Second)
	return len(h.sw.Frames(isRARP))
}

// TestInVMPackages installs the .deb and runs the packaged unit through its
// life, then does the same with the .rpm in its place, on one host B.
func TestInVMPackages(t *testing.T) {
	vm.RequireInside(t)
	h := newHost(t)
	if !t.Run("deb", func(t *testing.T) { debLifecycle(t, h) }) {
		return
	}
	t.Run("rpm", func(t *testing.T) { rpmLifecycle(t, h) })
}

func debLifecycle(t *testing.T, h *host) {

	// A real host has no policy-rc.d; the image the VM shares does (it
	// forbids starting services), and the postinst must be seen starting it.
	os.Remove("/usr/sbin/policy-rc.d")
	// man-db's dpkg trigger rebuilds the whole man index: minutes under TCG,
	// and nothing this test looks at.
	os.Remove("/var/lib/man-db/auto-update")
	pkg := os.Getenv(envDeb)
	start := time.Now()
	if out, err := runErr("dpkg", "-i", pkg); err != nil {
		t.Fatalf("dpkg -i %s: %v\n%s", pkg, err, out)
	}
	t.Logf("dpkg -i: %v", time.Since(start).Round(time.Millisecond))

	t.Run("notify", func(t *testing.T) {
		// The postinst started it; Type=notify means "active" only after READY=1.
		waitState(t, 60*time.Second, "active", "running", 0)
		p := show(t, "Type", "NotifyAccess", "WatchdogUSec", "UnitFileState")
		if p["Type"] != "notify" || p["UnitFileState"] != "enabled" {
			t.Errorf("unit after install: %v, want Type=notify and enabled by the postinst", p)
		}
		if !strings.Contains(journal(t), "watching") {
			t.Errorf("no \"watching\" line in the journal:\n%s", journal(t))
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	t.Run("migration announced", func(t *testing.T) {
		rep, err := h.lab.Migrate(context.Background(), "systemd", lab.Migration{
			Interval: 100 * time.Millisecond, Before: 500 * time.Millisecond, After: 5 * time.Second, Pause: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("migration under the systemd unit: %s", rep)
		// Loss is timing (TCG); where the network sends the guest is not.
		for _, bad := range h.lab.FDBFollowed() {
			t.Error(bad)
		}
		mac, _ := net.ParseMAC(lab.GuestMAC)
		if n := h.rarps(t, mac, 5, 10*time.Second); n != 5 {
			t.Errorf("switch got %d RARPs for the guest from host B, want the default 5", n)
		}
		s := scrape(t)
		if s[doctor.MetricArrivals] < 1 || s[doctor.MetricBursts+`{result="completed"}`] < 1 {
			t.Errorf("metrics on 127.0.0.1: arrivals %v, completed bursts %v", s[doctor.MetricArrivals], s[doctor.MetricBursts+`{result="completed"}`])
		}
	})

	pid := waitState(t, 5*time.Second, "active", "running", 0)
	t.Run("reload applies", func(t *testing.T) {
		writeConfig(t, "schedule:\n  rounds: 2\n")
		run(t, "systemctl", "reload", unit)
		waitJournal(t, 20*time.Second, "config reloaded", 1)
		if p := waitState(t, 5*time.Second, "active", "running", 0); p != pid {
			t.Errorf("reload changed MainPID %d -> %d", pid, p)
		}
		mac := h.arrive(t)
		if n := h.rarps(t, mac, 2, 15*time.Second); n != 2 {
			t.Errorf("after reload with rounds 2: switch got %d RARPs, want 2", n)
		}
	})

	t.Run("bad config kept out", func(t *testing.T) {
		writeConfig(t, "schedule:\n  rounds: 2\nrats: 1\n")
		out, err := runErr("systemctl", "reload", unit)
		t.Logf("systemctl reload with a bad file: %v %s", err, out)
		waitJournal(t, 20*time.Second, "config reload failed; keeping the old config", 1)
		if !strings.Contains(journal(t), "rats") {
			t.Errorf("the journal does not name the bad key:\n%s", tail(journal(t), 10))
		}
		if p := waitState(t, 5*time.Second, "active", "running", 0); p != pid {
			t.Errorf("bad reload changed MainPID %d -> %d", pid, p)
		}
		mac := h.arrive(t)
		if n := h.rarps(t, mac, 2, 15*time.Second); n != 2 {
			t.Errorf("after a bad reload: switch got %d RARPs, want the old config's 2", n)
		}
		writeConfig(t, "schedule:\n  rounds: 2\n")
	})

	t.Run("watchdog", func(t *testing.T) {
		before, _ := strconv.Atoi(show(t, "NRestarts")["NRestarts"])
		stopped := time.Now()
		if err := exec.Command("kill", "-STOP", strconv.Itoa(pid)).Run(); err != nil {
			t.Fatal(err)
		}
		// WatchdogSec=20s, then SIGABRT (held while stopped) and SIGKILL
		// after TimeoutAbortSec, then RestartSec=2s.
		npid := waitState(t, 120*time.Second, "active", "running", pid)
		t.Logf("SIGSTOP to a new MainPID running: %v (WatchdogSec=20s)", time.Since(stopped).Round(100*time.Millisecond))
		after, _ := strconv.Atoi(show(t, "NRestarts")["NRestarts"])
		if after != before+1 {
			t.Errorf("NRestarts %d -> %d, want one restart", before, after)
		}
		if j := journal(t); !strings.Contains(j, "atchdog timeout") {
			t.Errorf("journal does not say the watchdog fired:\n%s", tail(j, 20))
		}
		pid = npid
		mac := h.arrive(t)
		if n := h.rarps(t, mac, 2, 20*time.Second); n != 2 {
			t.Errorf("restarted daemon: switch got %d RARPs, want 2 (config rounds 2)", n)
		}
	})

	t.Run("sandbox", func(t *testing.T) { sandbox(t, h) })

	t.Run("security score", func(t *testing.T) {
		out, _ := runErr("systemd-analyze", "security", "--no-pager", unit)
		m := regexp.MustCompile(`Overall exposure level for selfannounce.service: ([0-9.]+) (\w+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("systemd-analyze security:\n%s", out)
		}
		doc, err := os.ReadFile("/usr/share/doc/selfannounce/operations.md")
		if err != nil {
			t.Fatal(err)
		}
		want := regexp.MustCompile(`is \*\*([0-9.]+) (\w+)\*\*`).FindSubmatch(doc)
		if want == nil {
			t.Fatal("operations.md states no score")
		}
		t.Logf("systemd-analyze security %s: %s %s", unit, m[1], m[2])
		if m[1] != string(want[1]) || m[2] != string(want[2]) {
			t.Errorf("score %s %s, operations.md says %s %s:\n%s", m[1], m[2], want[1], want[2], out)
		}
	})

	t.Run("stop", func(t *testing.T) {
		run(t, "systemctl", "stop", unit)
		p := show(t, "ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
		if p["ActiveState"] != "inactive" || p["Result"] != "success" {
			t.Errorf("after stop: %v, want inactive, result success", p)
		}
		if !strings.Contains(journal(t), "stopping") {
			t.Errorf("no \"stopping\" line:\n%s", tail(journal(t), 10))
		}
		if _, err := (&http.Client{Timeout: time.Second}).Get(metricsURL); err == nil {
			t.Error("metrics still answer after stop")
		}
	})

	t.Run("remove", func(t *testing.T) {
		run(t, "systemctl", "start", unit)
		waitState(t, 60*time.Second, "active", "running", 0)
		run(t, "dpkg", "--purge", "selfannounce")
		if p := show(t, "ActiveState", "LoadState"); p["ActiveState"] != "inactive" || p["LoadState"] != "not-found" {
			t.Errorf("after dpkg --purge: %v, want the unit stopped and gone", p)
		}
	})
}

// rpmLifecycle installs the .rpm where the .deb was and starts the unit.
func rpmLifecycle(t *testing.T, h *host) {
	testenv.RequireCommands(t, "rpm")
	if out, err := runErr("dpkg-query", "-W", "selfannounce"); err == nil {
		t.Fatalf("the .deb is still installed: %s", out)
	}
	pkg := os.Getenv(envRPM)
	if out, err := runErr("rpm", "-i", "--nodeps", pkg); err != nil {
		t.Fatalf("rpm -i --nodeps %s: %v\n%s", pkg, err, out)
	}
	run(t, "systemctl", "daemon-reload")
	// Debian's merged /usr shows /usr/lib/systemd/system as /lib/...
	frag := show(t, "FragmentPath")["FragmentPath"]
	a, errA := os.Stat(frag)
	b, errB := os.Stat("/usr/lib/systemd/system/selfannounce.service")
	if errA != nil || errB != nil || !os.SameFile(a, b) {
		t.Errorf("unit loaded from %q (%v, %v), want the rpm's /usr/lib/systemd/system/selfannounce.service", frag, errA, errB)
	}
	run(t, "systemctl", "start", unit)
	pid := waitState(t, 60*time.Second, "active", "running", 0)
	if p := show(t, "Type"); p["Type"] != "notify" {
		t.Errorf("Type %v", p)
	}
	if s := scrape(t); len(s) == 0 {
		t.Error("no metrics from the rpm's daemon")
	}
	mac := h.arrive(t)
	if n := h.rarps(t, mac, 5, 15*time.Second); n != 5 {
		t.Errorf("rpm's daemon: switch got %d RARPs, want the default 5", n)
	}
	run(t, "systemctl", "stop", unit)
	if p := show(t, "ActiveState", "Result"); p["ActiveState"] != "inactive" || p["Result"] != "success" {
		t.Errorf("after stop (pid was %d): %v", pid, p)
	}
	run(t, "rpm", "-e", "--nodeps", "selfannounce")
}

// sandbox proves the hardened unit still reaches a libvirtd and an Open
// vSwitch at their real socket paths (under /run, read-only to the unit):
// it subscribes to libvirt's events, reads OVSDB and announces through
// OpenFlow. The xenstored socket, packet sockets and the metrics endpoint
// are proved by every migration above.
func sandbox(t *testing.T, h *host) {
	// Both are private daemons whose sockets live in test directories; a
	// bind mount puts each at the path a real host has it.
	bind := func(src, dst string, dir bool) {
		t.Helper()
		if dir {
			os.MkdirAll(dst, 0o755)
		} else {
			os.MkdirAll(filepath.Dir(dst), 0o755)
			os.WriteFile(dst, nil, 0o600)
		}
		run(t, "mount", "--bind", src, dst)
		t.Cleanup(func() { exec.Command("umount", "-l", dst).Run() })
	}

	lv := libvirttest.Start(t, libvirttest.Options{})
	bind(lv.Socket, "/run/libvirt/libvirt-sock", false)

	o := ovstest.Start(t, h.root)
	bind(o.Dir(), "/run/openvswitch", true)
	const ovsBridge = "ovsbr"
	o.AddBridge(t, ovsBridge)
	t.Cleanup(func() { o.VsctlErr("--if-exists", "del-br", ovsBridge) })
	up := netlab.TestNS(t, "ovsup")
	if _, err := h.root.Sh(fmt.Sprintf("ip link add ovsup0 type veth peer name peer0 netns %s; ip link set ovsup0 up", up.Name)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.root.Run("ip", "link", "del", "ovsup0") })
	up.MustRun(t, "ip", "link", "set", "peer0", "up")
	o.Vsctl(t, "add-port", ovsBridge, "ovsup0")
	wire := wiretest.Start(t, up, "peer0", wiretest.In)

	// Both are looked for at start: restart, as after installing them.
	run(t, "systemctl", "restart", unit)
	waitState(t, 60*time.Second, "active", "running", 0)
	waitJournal(t, 30*time.Second, "subscribed to libvirt lifecycle events", 1)
	waitJournal(t, 30*time.Second, "OVSDB state read", 1)

	g := netlab.TestNS(t, "ovsg")
	mac := net.HardwareAddr{0x00, 0x16, 0x3e, 0x5d, 0x0f, 0x01}
	if _, err := h.root.Sh(fmt.Sprintf("ip link add vif90.0 type veth peer name eth0 netns %s; ip link set vif90.0 up", g.Name)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.root.Run("ip", "link", "del", "vif90.0") })
	o.Vsctl(t, "add-port", ovsBridge, "vif90.0", "--", "set", "Interface", "vif90.0", "external_ids:attached-mac="+mac.String())
	if _, err := g.Sh(fmt.Sprintf(`
		sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
		ip link set eth0 address %s arp off
		ip link set eth0 up`, mac)); err != nil {
		t.Fatal(err)
	}
	isRARP := func(f wiretest.Frame) bool { return wiretest.From(mac)(f) && f.EtherType() == 0x8035 }
	if fs := wire.WaitFor(20*time.Second, 1, isRARP); len(fs) == 0 {
		t.Errorf("no RARP for the OVS guest left the OVS uplink: OVSDB or OpenFlow unreachable from the unit\n%s", tail(journal(t), 30))
	}
}
