//go:build linux

package kernel_test

// `announce doctor` on the Debian kernel's real sysfs: bonds, an alb bond
// under a bridge, real 802.3ad LACPDUs. Each trap is built in its own
// namespace and must be found by its check id; a healthy host with the
// daemon running must be clean with nothing skipped. Then copies of that
// real sysfs, trimmed to what older kernels show, must never be fatal and
// must list what they could not check. Run inside the VM by the package's
// host wrapper (TestInVM...).

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/announce/doctor"
	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/proctest"
	"github.com/selfannounce/selfannounce/internal/sysfscopy"
	"github.com/selfannounce/selfannounce/internal/testbin"
	"github.com/selfannounce/selfannounce/internal/testenv"
	"github.com/selfannounce/selfannounce/internal/vm"
)

// runDoctor runs `announce doctor --json args...` in ns (or the current
// namespace when ns is nil) and returns the report and the exit status.
func runDoctor(t *testing.T, ns *netlab.NS, args ...string) (*doctor.Report, int) {
	t.Helper()
	bin := testbin.Announce(t)
	args = append([]string{"doctor", "--json"}, args...)
	var cmd *exec.Cmd
	if ns != nil {
		cmd = ns.Cmd(bin, args...)
	} else {
		cmd = exec.Command(bin, args...)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	var r doctor.Report
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("doctor %v: exit %d, %v\nstdout: %s\nstderr: %s", args, code, err, stdout.Bytes(), stderr.Bytes())
	}
	return &r, code
}

func ids(r *doctor.Report) []string {
	var out []string
	for _, f := range r.Findings {
		out = append(out, fmt.Sprintf("%s %s %s", f.ID, f.Object, f.Severity))
	}
	sort.Strings(out)
	return out
}

func skipIDs(r *doctor.Report) []string {
	var out []string
	for _, s := range r.Skipped {
		out = append(out, strings.TrimSpace(s.ID+" "+s.Object))
	}
	sort.Strings(out)
	return out
}

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func setup(t *testing.T, role, script string) *netlab.NS {
	t.Helper()
	ns := netlab.TestNS(t, role)
	if _, err := ns.Sh(script); err != nil {
		t.Fatal(err)
	}
	return ns
}

// noAgent: these namespaces run no daemon, and the agent check is not what
// they test.
var noAgent = []string{"--metrics", "", "--no-listen"}

func TestInVMDoctorSTP(t *testing.T) {
	vm.RequireInside(t)
	ns := setup(t, "dstp", `
ip link add br0 type bridge stp_state 1 forward_delay 1500
ip link add vif1.0 type veth peer name guest0
ip link set vif1.0 master br0
ip link set guest0 up
ip link set vif1.0 up
ip link set br0 up`)
	r, code := runDoctor(t, ns, noAgent...)
	if g := ids(r); !has(g, "stp-forward-delay br0 error") || code != 2 {
		t.Fatalf("findings %v exit %d, want stp-forward-delay br0 error, exit 2", g, code)
	}
	for _, f := range r.Findings {
		if f.ID == doctor.CheckSTPForwardDelay && (!strings.Contains(f.Detail, "forward_delay=15s") || !strings.Contains(f.Detail, "not forwarding right now: vif1.0")) {
			t.Errorf("detail %q: want the 15 s delay and vif1.0 held by the kernel's STP", f.Detail)
		}
	}
}

func TestInVMDoctorBridgeOnALBBond(t *testing.T) {
	vm.RequireInside(t)
	ns := setup(t, "dalb", `
modprobe bonding max_bonds=0 || true
ip link add bond0 type bond mode balance-alb miimon 100
ip link add eth0 type veth peer name sw0
ip link add eth1 type veth peer name sw1
ip link set eth0 master bond0
ip link set eth1 master bond0
ip link add xenbr0 type bridge
ip link set bond0 master xenbr0
ip link add vif1.0 type veth peer name guest0
ip link set vif1.0 master xenbr0
for l in sw0 sw1 guest0 vif1.0 bond0 xenbr0; do ip link set $l up; done`)
	if mode := ns.MustRun(t, "cat", "/sys/class/net/bond0/bonding/mode"); !strings.HasPrefix(mode, "balance-alb") {
		t.Fatalf("lab: bond0 mode %q", mode)
	}
	r, code := runDoctor(t, ns, noAgent...)
	if g := ids(r); !has(g, "bridge-on-unsafe-bond xenbr0/bond0 error") || code != 2 {
		t.Fatalf("findings %v exit %d, want bridge-on-unsafe-bond xenbr0/bond0 error", g, code)
	}
}

func TestInVMDoctorJumboManagementBond(t *testing.T) {
	vm.RequireInside(t)
	ns := setup(t, "djumbo", `
modprobe bonding max_bonds=0 || true
ip link add mgmt0 type bond mode active-backup miimon 100
ip link add eth0 type veth peer name sw0
ip link add eth1 type veth peer name sw1
ip link set eth0 master mgmt0
ip link set eth1 master mgmt0
ip link set mgmt0 mtu 9000
for l in sw0 sw1 mgmt0; do ip link set $l up; done
ip addr add 192.0.2.10/24 dev mgmt0
ip route add default via 192.0.2.1 dev mgmt0 onlink`)
	r, code := runDoctor(t, ns, noAgent...)
	if g := ids(r); !has(g, "jumbo-management-bond mgmt0 warning") || code != 1 {
		t.Fatalf("findings %v exit %d, want jumbo-management-bond mgmt0 warning, exit 1", g, code)
	}
}

func TestInVMDoctorVIFMTUMismatch(t *testing.T) {
	vm.RequireInside(t)
	ns := setup(t, "dmtu", `
ip link add xenbr0 type bridge
ip link add eth0 type veth peer name sw0
ip link set eth0 master xenbr0
ip link add vif3.0 type veth peer name guest0
ip link set vif3.0 mtu 1400
ip link set vif3.0 master xenbr0
for l in sw0 eth0 guest0 vif3.0 xenbr0; do ip link set $l up; done
ip link set xenbr0 mtu 1500`)
	r, code := runDoctor(t, ns, noAgent...)
	if g := ids(r); !has(g, "vif-mtu-mismatch xenbr0/vif3.0 error") || code != 2 {
		t.Fatalf("findings %v exit %d, want vif-mtu-mismatch xenbr0/vif3.0 error", g, code)
	}
}

// The switch runs a real 802.3ad bond (the kernel's LACP) on the two ports
// facing the host's active-backup bond.
func TestInVMDoctorLACPMismatch(t *testing.T) {
	vm.RequireInside(t)
	sw := setup(t, "dlsw", "modprobe bonding max_bonds=0 || true")
	ns := setup(t, "dlacp", fmt.Sprintf(`
ip link add bond2 type bond mode active-backup miimon 100
ip link add h0 type veth peer name s0 netns %[1]s
ip link add h1 type veth peer name s1 netns %[1]s
ip link set h0 master bond2
ip link set h1 master bond2
ip link set bond2 up`, sw.Name))

	// LACP sends fast only until it gives up on a silent partner, then every
	// 30 s: start the doctor listening first, then bring the switch's LAG up.
	bin := testbin.Announce(t)
	var stdout bytes.Buffer
	cmd := ns.Cmd(bin, "doctor", "--json", "--metrics", "", "--listen-time", "20s")
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	end := time.Now().Add(15 * time.Second)
	for {
		out, _ := ns.Run("cat", "/proc/net/packet")
		if strings.Count(out, "\n") >= 2 { // header + one line per member
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the doctor opened no packet sockets on bond2's members within 15s: %s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := sw.Sh(`
ip link add lag0 type bond mode 802.3ad lacp_rate fast miimon 100
ip link set s0 master lag0
ip link set s1 master lag0
ip link set lag0 up`); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("doctor did not finish within 60s of a 20s listen")
	}
	var r doctor.Report
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("%v: %s", err, stdout.Bytes())
	}
	g := ids(&r)
	if !has(g, "lacp-mismatch bond2/h0 error") && !has(g, "lacp-mismatch bond2/h1 error") {
		t.Fatalf("findings %v, want lacp-mismatch on a member of bond2", g)
	}
	for _, f := range r.Findings {
		if f.ID == doctor.CheckLACPMismatch && !strings.Contains(f.Detail, "active-backup") {
			t.Errorf("detail %q does not name the bond's mode", f.Detail)
		}
	}
	if code := cmd.ProcessState.ExitCode(); code != 2 {
		t.Errorf("exit %d, want 2", code)
	}
}

// A healthy host: bridge without STP on an active-backup bond facing a
// switch that runs no LACP, VM port with the bridge's MTU, the daemon
// answering on its metrics port. Every check runs, none finds anything.
func TestInVMDoctorCleanHost(t *testing.T) {
	vm.RequireInside(t)
	testenv.RequireCommands(t, "ip")
	sw := setup(t, "dcsw", "ip link add sw type bridge; ip link set sw up")
	ns := setup(t, "dclean", fmt.Sprintf(`
modprobe bonding max_bonds=0 || true
ip link add bond0 type bond mode active-backup miimon 100
ip link add eth0 type veth peer name p0 netns %[1]s
ip link add eth1 type veth peer name p1 netns %[1]s
ip link set eth0 master bond0
ip link set eth1 master bond0
ip link add xenbr0 type bridge
ip link set bond0 master xenbr0
ip link add vif1.0 type veth peer name guest0
ip link set vif1.0 master xenbr0
for l in guest0 vif1.0 bond0 xenbr0; do ip link set $l up; done
ip addr add 192.0.2.10/24 dev xenbr0
ip route add default via 192.0.2.1 dev xenbr0`, sw.Name))
	sw.MustRun(t, "sh", "-ec", "for p in p0 p1; do ip link set $p master sw up; done")

	cfg := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfg, []byte("vm-ports: [\"vif*\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := proctest.Start(t, ns, testbin.Announce(t), "daemon", "--config", cfg, "--log-format", "json", "--metrics-listen", "127.0.0.1:9474")
	t.Cleanup(func() { d.Stop(5 * time.Second) })
	if ls := d.WaitLogs(20*time.Second, 1, func(l proctest.Log) bool { return strings.Contains(l.Msg, "watching") }); len(ls) == 0 {
		t.Fatalf("daemon did not start:\n%s", d.Output())
	}
	r, code := runDoctor(t, ns)
	if len(r.Findings) != 0 || len(r.Skipped) != 0 || code != 0 {
		t.Fatalf("clean host: findings %v skipped %v exit %d, want nothing and 0", ids(r), skipIDs(r), code)
	}
}

// TestInVMDoctorTrimmedSysfs copies the real sysfs of a namespace with
// every trap at once, then deletes from the copy what older kernels and
// partial copies lack.
func TestInVMDoctorTrimmedSysfs(t *testing.T) {
	vm.RequireInside(t)
	ns := setup(t, "dtrim", `
modprobe bonding max_bonds=0 || true
ip link add bond0 type bond mode balance-alb miimon 100
ip link add eth0 type veth peer name sw0
ip link add eth1 type veth peer name sw1
ip link set eth0 master bond0
ip link set eth1 master bond0
ip link add xenbr0 type bridge stp_state 1 forward_delay 1500 mcast_snooping 1 mcast_querier 1
ip link set bond0 master xenbr0
ip link add vif1.0 type veth peer name guest0
ip link set vif1.0 master xenbr0
ip link set vif1.0 type bridge_slave learning off
for l in sw0 sw1 guest0 vif1.0 bond0 xenbr0; do ip link set $l up; done`)
	live := t.TempDir()
	if err := sysfscopy.Copy(live, "/run/netns/"+ns.Name); err != nil {
		t.Fatal(err)
	}
	all := []string{
		"bridge-on-unsafe-bond xenbr0/bond0 error",
		"mld-snooping xenbr0 warning",
		"stp-forward-delay xenbr0 error",
		"vif-learning-off xenbr0/vif1.0 warning",
	}
	r, code := runDoctor(t, nil, "--root", live)
	if g := ids(r); fmt.Sprint(g) != fmt.Sprint(all) || code != 2 {
		t.Fatalf("copy of the real sysfs: findings %v exit %d, want %v exit 2", g, code, all)
	}
	without := func(f string) []string {
		var out []string
		for _, w := range all {
			if w != f {
				out = append(out, w)
			}
		}
		return out
	}
	for _, tc := range []struct {
		name  string
		globs []string
		want  []string
		skip  string
	}{
		{"before 3.11", []string{"sys/class/net/vif1.0/brport/learning"}, without(all[3]), "vif-learning-off xenbr0/vif1.0"},
		{"no IGMP snooping", []string{"sys/class/net/xenbr0/bridge/multicast_*"}, without(all[1]), "mld-snooping xenbr0"},
		{"no sysfs bonding files", []string{"sys/class/net/bond0/bonding"}, all, ""},
		{"no bonding files at all", []string{"sys/class/net/bond0/bonding", "proc/net/bonding"}, without(all[0]), "bridge-on-unsafe-bond xenbr0/bond0"},
		{"no bonding files, no bonding_masters", []string{"sys/class/net/bond0/bonding", "proc/net/bonding", "sys/class/net/bonding_masters"},
			without(all[0]), "bridge-on-unsafe-bond xenbr0/bond0"},
		{"2.6.32 links", []string{"sys/class/net/*/master", "sys/class/net/*/upper_*", "sys/class/net/*/lower_*"}, all, ""},
		{"no proc dir", []string{"proc"}, all, "jumbo-management-bond"},
		{"no sys dir", []string{"sys"}, nil, "stp-forward-delay"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			if out, err := exec.Command("cp", "-a", live+"/.", root).CombinedOutput(); err != nil {
				t.Fatalf("cp: %v %s", err, out)
			}
			for _, g := range tc.globs {
				ms, _ := filepath.Glob(filepath.Join(root, g))
				if len(ms) == 0 {
					t.Fatalf("trim %s: nothing matches in the copy", g)
				}
				for _, m := range ms {
					os.RemoveAll(m)
				}
			}
			r, code := runDoctor(t, nil, "--root", root)
			if g := ids(r); fmt.Sprint(g) != fmt.Sprint(tc.want) {
				t.Errorf("findings %v, want %v", g, tc.want)
			}
			wantCode := 0
			if len(tc.want) > 0 {
				wantCode = 2
			}
			if code != wantCode {
				t.Errorf("exit %d, want %d (findings only decide it)", code, wantCode)
			}
			if tc.skip != "" && !has(skipIDs(r), tc.skip) {
				t.Errorf("skipped %v, want %q among them", skipIDs(r), tc.skip)
			}
		})
	}
}
