//go:build linux

package doctor

import (
	"fmt"
	"reflect"
	"testing"

	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/sysfscopy"
	"github.com/selfannounce/selfannounce/internal/testenv"
)

// TestTrimmedRealSysfs copies this kernel's own /sys and /proc/net for a
// namespace with an STP bridge, then deletes what older kernels lack: each
// deletion turns its check's finding into a skip, the rest stay found.
// (Bonds are not in this machine's kernel: the bonding/ deletions on a real
// bond run in the Debian-kernel VM, e2e/kernel.)
func TestTrimmedRealSysfs(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "ip")
	ns := netlab.TestNS(t, "dtrim")
	if _, err := ns.Sh(`
ip link add br0 type bridge stp_state 1 forward_delay 1500 mcast_snooping 1 mcast_querier 1
ip link add vif1.0 type veth peer name guest0
ip link set vif1.0 mtu 1400
ip link set vif1.0 master br0
ip link set vif1.0 type bridge_slave learning off
ip link set guest0 up
ip link set vif1.0 up
ip link set br0 up
ip link set br0 mtu 1500
`); err != nil {
		t.Fatal(err)
	}
	live := t.TempDir()
	if err := sysfscopy.Copy(live, "/run/netns/"+ns.Name); err != nil {
		t.Fatal(err)
	}
	all := []want{
		{CheckMLDSnooping, "br0", Warning},
		{CheckSTPForwardDelay, "br0", Error},
		{CheckVIFLearningOff, "br0/vif1.0", Warning},
		{CheckVIFMTUMismatch, "br0/vif1.0", Error},
	}
	if g := got(runRoot(t, live)); fmt.Sprint(g) != fmt.Sprint(all) {
		t.Fatalf("copy of the real sysfs: findings %v, want %v", g, all)
	}
	without := func(id string) []want {
		var out []want
		for _, w := range all {
			if w.id != id {
				out = append(out, w)
			}
		}
		return out
	}
	for _, tc := range []struct {
		name  string
		globs []string
		want  []want
		skip  string // "id object" listed under skipped
	}{
		{"before 3.11: no brport/learning", []string{"sys/class/net/vif1.0/brport/learning"},
			without(CheckVIFLearningOff), CheckVIFLearningOff + " br0/vif1.0"},
		{"no IGMP snooping: no multicast_*", []string{"sys/class/net/br0/bridge/multicast_*"},
			without(CheckMLDSnooping), CheckMLDSnooping + " br0"},
		{"no forward_delay", []string{"sys/class/net/br0/bridge/forward_delay"},
			without(CheckSTPForwardDelay), CheckSTPForwardDelay + " br0"},
		// 2.6.32: bridge ports have brport/bridge but no master, upper_ or
		// lower_ links; brif/ still lists them.
		{"2.6.32 links", []string{"sys/class/net/vif1.0/master", "sys/class/net/vif1.0/upper_*"}, all, ""},
		{"no brif", []string{"sys/class/net/br0/brif"}, all, ""},
		{"port's device lost", []string{"sys/devices/virtual/net/vif1.0"},
			[]want{{CheckMLDSnooping, "br0", Warning}, {CheckSTPForwardDelay, "br0", Error}},
			CheckVIFMTUMismatch + " br0/vif1.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := copyTree(t, live)
			trim(t, root, tc.globs...)
			r := runRoot(t, root)
			if g := got(r); !reflect.DeepEqual(g, tc.want) {
				t.Errorf("findings %v, want %v", g, tc.want)
			}
			found := tc.skip == ""
			for _, s := range skips(r) {
				if s == tc.skip {
					found = true
				}
			}
			if !found {
				t.Errorf("skipped %q, want %q among them", skips(r), tc.skip)
			}
		})
	}
}
