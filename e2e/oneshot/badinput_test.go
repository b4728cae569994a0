//go:build linux

package oneshot_test

import (
	"strings"
	"testing"

	"github.com/selfannounce/selfannounce/internal/proctest"
	"github.com/selfannounce/selfannounce/internal/testenv"
)

// badCase is one refused invocation: its exit code, what its one-line
// error must name, and that nothing reaches the wire or the bridge.
type badCase struct {
	name string
	args []string
	// noRaw runs the binary without CAP_NET_RAW.
	noRaw bool
	code  int
	want  []string // substrings of the error line
}

func TestBadInput(t *testing.T) {
	// setpriv (util-linux) drops CAP_NET_RAW for one case.
	testenv.RequireCommands(t, "setpriv")
	l := newLab(t)
	l.teach(t, guestMAC)
	upMAC := l.host.MustRun(t, "cat", "/sys/class/net/up0/address")
	ok := []string{"--vif", "vif3.0", "--mac", guestMAC, "--ip", "10.0.0.10", "--ip", "fd00::10"}
	with := func(extra ...string) []string { return append(append([]string(nil), ok...), extra...) }
	cases := []badCase{
		// Usage errors: exit 2.
		{name: "malformed MAC", args: []string{"--vif", "vif3.0", "--mac", "52:54:00:zz:34:56"}, code: 2,
			want: []string{`malformed MAC "52:54:00:zz:34:56"`}},
		{name: "multicast MAC", args: []string{"--vif", "vif3.0", "--mac", "01:00:5e:00:00:01"}, code: 2,
			want: []string{"01:00:5e:00:00:01", "multicast"}},
		{name: "Xen vif MAC given", args: []string{"--vif", "vif3.0", "--mac", "fe:ff:ff:ff:ff:ff"}, code: 2,
			want: []string{"fe:ff:ff:ff:ff:ff", "Xen's vif MAC"}},
		{name: "malformed IPv4", args: []string{"--vif", "vif3.0", "--mac", guestMAC, "--ip", "10.0.0.300"}, code: 2,
			want: []string{`malformed IP address "10.0.0.300"`}},
		{name: "malformed IPv6", args: []string{"--vif", "vif3.0", "--mac", guestMAC, "--ip", "fd00::10::1"}, code: 2,
			want: []string{`malformed IP address "fd00::10::1"`}},
		{name: "malformed duration", args: with("--initial", "5xs"), code: 2,
			want: []string{`"5xs"`, "--initial"}},
		{name: "negative duration", args: with("--max", "-1s"), code: 2,
			want: []string{"max", "-1s"}},
		{name: "zero rounds", args: with("--rounds", "0"), code: 2,
			want: []string{"rounds 0"}},
		{name: "unknown flag", args: with("--frobnicate"), code: 2,
			want: []string{"frobnicate"}},
		{name: "no selector", args: []string{"--mac", guestMAC}, code: 2,
			want: []string{"--vif"}},

		// Runtime errors: exit 1.
		{name: "unknown interface", args: []string{"--vif", "vif9.0", "--mac", guestMAC}, code: 1,
			want: []string{`"vif9.0"`, "does not exist"}},
		{name: "not a bridge port", args: []string{"--vif", "vif4.0", "--mac", guestMAC}, code: 1,
			want: []string{`"vif4.0"`, "is not a bridge port"}},
		{name: "bridge without uplink", args: []string{"--vif", "vif5.0", "--mac", guestMAC}, code: 1,
			want: []string{`"br1"`, "has no uplink"}},
		{name: "no CAP_NET_RAW", args: ok, noRaw: true, code: 1,
			want: []string{"CAP_NET_RAW"}},
		// The port's own MAC is never the guest's: a Xen vif carries
		// fe:ff:ff:ff:ff:ff, and with no --mac and no config entry there is
		// no guest MAC at all.
		{name: "vif MAC not taken as the guest's", args: []string{"--vif", "vif3.0", "--ip", "10.0.0.10"}, code: 1,
			want: []string{`no MAC known for port "vif3.0"`, "--mac"}},
		// A libvirt-style port's MAC is the host's, not the guest's.
		{name: "port's own MAC given", args: []string{"--vif", "vnet7", "--mac", "fe:54:00:aa:bb:cc"}, code: 1,
			want: []string{"fe:54:00:aa:bb:cc", "vnet7"}},
		{name: "host's uplink MAC given", args: []string{"--vif", "vif3.0", "--mac", upMAC}, code: 1,
			want: []string{upMAC, "owned by this host"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sw := startCapture(t, l.sw, "sw0")
			guest := startCapture(t, l.guest, "eth0")
			var r proctest.Result
			if c.noRaw {
				// As root, an exec without net_raw in the bounding set (and
				// nothing inheritable) leaves the binary without it.
				r = run(t, l.host, "setpriv", append([]string{"--inh-caps=-all", "--bounding-set=-net_raw", "--", l.bin}, l.hermetic(c.args)...)...)
			} else {
				r = l.announce(t, c.args...)
			}
			t.Logf("exit %d, stderr: %s", r.Code, r.Stderr)
			checkOneLineError(t, r, c.code, c.want...)
			if a := announcements(sw.Stop(t), mustMAC(t, guestMAC)); len(a) != 0 {
				t.Errorf("frames reached the switch:%s", describe(a))
			}
			if a := announcements(guest.Stop(t), mustMAC(t, guestMAC)); len(a) != 0 {
				t.Errorf("frames reached the guest:%s", describe(a))
			}
			if port := fdbPort(t, l.host, "br0", guestMAC); port != "up0" {
				t.Errorf("host bridge FDB has %s on %q, want it untouched on up0", guestMAC, port)
			}
			if port := fdbPort(t, l.sw, "swbr", guestMAC); port != "sw1" {
				t.Errorf("switch FDB has %s on %q, want it untouched on sw1", guestMAC, port)
			}
		})
	}
	// The same lab and captures do see a burst, so the silence above is the
	// binary's and not a deaf capture's.
	t.Run("control: valid input is announced", func(t *testing.T) {
		sw := startCapture(t, l.sw, "sw0")
		r := l.announce(t, with("--rounds", "1")...)
		if r.Code != 0 {
			t.Fatalf("announce exited %d: %s", r.Code, r.Stderr)
		}
		if a := announcements(sw.Stop(t), mustMAC(t, guestMAC)); len(a) != 3 {
			t.Errorf("switch received %d announcement frames, want 3:%s", len(a), describe(a))
		}
	})
}

// checkOneLineError asserts the run failed with code and exactly one line
// on stderr, "announce: ...", naming every one of want.
func checkOneLineError(t *testing.T, r proctest.Result, code int, want ...string) {
	t.Helper()
	if r.Code != code {
		t.Errorf("exit code %d, want %d; stderr: %q", r.Code, code, r.Stderr)
	}
	if strings.Count(r.Stderr, "\n") != 1 || !strings.HasSuffix(r.Stderr, "\n") || !strings.HasPrefix(r.Stderr, "announce: ") {
		t.Errorf("stderr is not one \"announce: ...\" line: %q", r.Stderr)
	}
	for _, w := range want {
		if !strings.Contains(r.Stderr, w) {
			t.Errorf("error %q does not name %q", strings.TrimSpace(r.Stderr), w)
		}
	}
	if r.Stdout != "" {
		t.Errorf("stdout not empty on error: %q", r.Stdout)
	}
}
