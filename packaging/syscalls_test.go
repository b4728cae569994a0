//go:build linux

package packaging_test

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/testenv"
)

// With SystemCallErrorNumber=EPERM, a call the unit's SystemCallFilter=
// misses fails with EPERM somewhere deep in the daemon, and systemd is not
// PID 1 on CI to find out. So the packaged daemon runs under strace through start,
// a VM arrival with a burst on the uplink, a reload and a stop, and every
// system call it made must be one the unit's filter admits.
func TestUnitSyscallFilterAdmitsDaemon(t *testing.T) {
	deb, _ := builtPackages(t)
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "strace", "systemd-analyze", "dpkg-deb", "ip", "curl")

	x := t.TempDir()
	run(t, "dpkg-deb", "-x", deb, x)
	bin := filepath.Join(x, binPath)
	allowed := unitSyscalls(t, filepath.Join(x, unitDeb))

	cfg := filepath.Join(x, "config.yaml")
	if err := os.WriteFile(cfg, []byte(`guests: [{port: "vif5.0", mac: "52:54:00:5a:00:05", ips: ["192.0.2.5", "2001:db8::5"]}]
metrics: {listen: "127.0.0.1:9474"}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	ns := netlab.TestNS(t, "pkgsys")
	if _, err := ns.Sh(`
ip link add br0 type bridge
ip link add up0 type veth peer name up0p
ip link set up0 master br0
ip link set br0 up; ip link set up0 up; ip link set up0p up`); err != nil {
		t.Fatal(err)
	}

	trace := filepath.Join(x, "strace")
	cmd := ns.Cmd("strace", "-f", "-qq", "-o", trace, bin, "daemon", "--config", cfg)
	logf, err := os.Create(filepath.Join(x, "daemon.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	exited := false
	defer func() {
		if !exited {
			cmd.Process.Kill()
			<-done
		}
	}()

	metrics := func() string {
		out, _ := ns.Run("curl", "-s", "--max-time", "2", "http://127.0.0.1:9474/metrics")
		return out
	}
	waitFor(t, "metrics endpoint", func() bool { return strings.Contains(metrics(), "selfannounce_ports") })

	// A VM arrives: its vif joins the bridge and gains carrier.
	if _, err := ns.Sh(`
ip link add vif5.0 type veth peer name guest5
ip link set vif5.0 master br0
ip link set vif5.0 up; ip link set guest5 up`); err != nil {
		t.Fatal(err)
	}
	sent := regexp.MustCompile(`(?m)^selfannounce_frames_sent_total\{kind="rarp"\} [1-9]`)
	waitFor(t, "a RARP sent for the arrival", func() bool { return sent.MatchString(metrics()) })

	// strace's pid is the daemon's parent; signal the daemon itself.
	pid := daemonPID(t, trace)
	syscall.Kill(pid, syscall.SIGHUP)
	time.Sleep(300 * time.Millisecond)
	syscall.Kill(pid, syscall.SIGTERM)
	select {
	case err := <-done:
		exited = true
		if err != nil {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("daemon under strace: %v\n%s", err, b)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("daemon did not stop on SIGTERM")
	}

	used := tracedSyscalls(t, trace)
	var denied []string
	for _, s := range used {
		if !allowed.admits(s) {
			denied = append(denied, s)
		}
	}
	if len(denied) > 0 {
		t.Errorf("the daemon makes system calls the unit's SystemCallFilter= denies: %v", denied)
	}
	t.Logf("%d distinct system calls, all admitted: %v", len(used), used)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var straceLine = regexp.MustCompile(`^(\d+) +([a-z0-9_]+)\(`)

func daemonPID(t *testing.T, trace string) int {
	t.Helper()
	f, err := os.Open(trace)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	if s.Scan() {
		if m := straceLine.FindStringSubmatch(s.Text()); m != nil {
			pid, _ := strconv.Atoi(m[1])
			return pid
		}
	}
	t.Fatal("no pid in the strace output")
	return 0
}

func tracedSyscalls(t *testing.T, trace string) []string {
	t.Helper()
	f, err := os.Open(trace)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen := map[string]bool{}
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		if m := straceLine.FindStringSubmatch(s.Text()); m != nil {
			seen[m[2]] = true
		}
	}
	// strace's own execve of the binary happens before the filter would.
	delete(seen, "execve")
	var out []string
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// syscallFilter is a unit's SystemCallFilter= as systemd applies it: an
// allow list (nil when the unit gives none, i.e. everything) less a deny set.
type syscallFilter struct {
	allow, deny map[string]bool
}

func (f syscallFilter) admits(s string) bool {
	return (f.allow == nil || f.allow[s]) && !f.deny[s]
}

// unitSyscalls evaluates the unit's SystemCallFilter= lines the way systemd
// does, with groups expanded by systemd-analyze itself.
func unitSyscalls(t *testing.T, unit string) syscallFilter {
	t.Helper()
	b, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	f := syscallFilter{deny: map[string]bool{}}
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		v, ok := strings.CutPrefix(strings.TrimSpace(l), "SystemCallFilter=")
		if !ok {
			continue
		}
		n++
		if w, deny := strings.CutPrefix(v, "~"); deny {
			for _, s := range expandSyscalls(t, strings.Fields(w)) {
				f.deny[s] = true
			}
			continue
		}
		if f.allow == nil {
			f.allow = map[string]bool{}
		}
		for _, s := range expandSyscalls(t, strings.Fields(v)) {
			f.allow[s] = true
			delete(f.deny, s)
		}
	}
	if n == 0 {
		t.Fatal("the unit sets no SystemCallFilter=")
	}
	return f
}

func expandSyscalls(t *testing.T, names []string) []string {
	t.Helper()
	var out []string
	for _, n := range names {
		if !strings.HasPrefix(n, "@") {
			out = append(out, n)
			continue
		}
		var sub []string
		for _, l := range strings.Split(run(t, "systemd-analyze", "syscall-filter", "--no-pager", n), "\n") {
			l = strings.TrimSpace(l)
			if l == "" || strings.HasPrefix(l, "#") || l == n {
				continue
			}
			sub = append(sub, strings.Fields(l)[0])
		}
		out = append(out, expandSyscalls(t, sub)...)
	}
	return out
}
