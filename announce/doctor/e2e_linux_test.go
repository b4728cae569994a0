//go:build linux

package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/testenv"
)

// envHelper makes the test binary act as `announce doctor --json` on the
// live host. The namespace test re-executes the binary this way under
// `ip netns exec`, which mounts the namespace's own /sys for it.
const envHelper = "SELFANNOUNCE_DOCTOR_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(envHelper) == "1" {
		err := Execute(context.Background(), Options{Root: "/"}, JSON, os.Stdout)
		var ee *ExitError
		if errors.As(err, &ee) {
			fmt.Fprintln(os.Stderr, ee)
			os.Exit(ee.Code)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// doctorInNS runs the doctor against the namespace's real /sys and /proc.
func doctorInNS(t *testing.T, ns *netlab.NS) (*Report, int) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := ns.Cmd(exe)
	cmd.Env = append(os.Environ(), envHelper+"=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	var r Report
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("doctor output: %v\nstdout: %s\nstderr: %s", err, stdout.Bytes(), stderr.Bytes())
	}
	return &r, code
}

func TestNamespaceLab(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "ip")
	ns := netlab.TestNS(t, "doctor")
	if _, err := ns.Sh(`
ip link add br0 type bridge stp_state 1 forward_delay 1500
ip link set br0 mtu 1500
ip link add vif1.0 type veth peer name guest0
ip link set vif1.0 mtu 1400
ip link set vif1.0 master br0
ip link set guest0 up
ip link set vif1.0 up
ip link set br0 up
ip link set br0 mtu 1500
`); err != nil {
		t.Fatal(err)
	}
	if mtu := ns.MustRun(t, "cat", "/sys/class/net/br0/mtu"); mtu != "1500" {
		t.Fatalf("lab setup: br0 MTU %s, want 1500 while its port has 1400", mtu)
	}

	r, code := doctorInNS(t, ns)
	w := []want{{CheckSTPForwardDelay, "br0", Error}, {CheckVIFMTUMismatch, "br0/vif1.0", Error}}
	if g := got(r); fmt.Sprint(g) != fmt.Sprint(w) || code != 2 {
		t.Fatalf("STP bridge, small vif MTU: findings %v exit %d, want %v exit 2", g, code, w)
	}
	for _, f := range r.Findings {
		if f.ID == CheckSTPForwardDelay && !strings.Contains(f.Detail, "not forwarding right now: vif1.0") {
			// The kernel holds the new port in listening; the doctor must see it.
			t.Errorf("detail %q does not report vif1.0 held by STP", f.Detail)
		}
	}

	// STP off and a VM port bigger than its bridge: a warning only.
	ns.MustRun(t, "sh", "-ec", "ip link set br0 type bridge stp_state 0; ip link set vif1.0 mtu 9000; ip link set br0 mtu 1500")
	r, code = doctorInNS(t, ns)
	w = []want{{CheckVIFMTUMismatch, "br0/vif1.0", Warning}}
	if g := got(r); fmt.Sprint(g) != fmt.Sprint(w) || code != 1 {
		t.Fatalf("after STP off, vif MTU 9000: findings %v exit %d, want %v exit 1", g, code, w)
	}

	ns.MustRun(t, "ip", "link", "set", "vif1.0", "mtu", "1500")
	r, code = doctorInNS(t, ns)
	if len(r.Findings) != 0 || code != 0 {
		t.Fatalf("fixed lab: findings %v exit %d, want none and 0", got(r), code)
	}
}

// TestLACPOverVeth plays the switch: m1 sends LACPDUs to m0, which the
// fixture tree describes as a member of an active-backup bond.
func TestLACPOverVeth(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "ip")
	ns := netlab.TestNS(t, "lacp")
	if _, err := ns.Sh("ip link add m0 type veth peer name m1; ip link set m0 up; ip link set m1 up"); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	var sendErr error
	go func() {
		defer wg.Done()
		sendErr = ns.Do(func() error {
			ifi, err := net.InterfaceByName("m1")
			if err != nil {
				return err
			}
			c, err := packet.Listen(ifi, packet.Raw, EtherTypeSlow, nil)
			if err != nil {
				return err
			}
			defer c.Close()
			dst := &packet.Addr{HardwareAddr: SlowProtocolsMAC}
			pdu := lacpdu(switchPortMAC, switchSystem, 17, 5)
			marker := append([]byte(nil), pdu...)
			marker[14] = 0x02
			for ctx.Err() == nil {
				// A marker PDU alone must not count as LACP.
				for _, f := range [][]byte{marker, pdu} {
					if _, err := c.WriteTo(f, dst); err != nil {
						return err
					}
				}
				time.Sleep(200 * time.Millisecond)
			}
			return nil
		})
	}()

	var r *Report
	err := ns.Do(func() error {
		var err error
		r, err = Run(context.Background(), Options{
			Root: "testdata/lacp-mismatch", Listener: PacketListener{}, ListenTime: 1500 * time.Millisecond,
		})
		return err
	})
	cancel()
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sendErr != nil {
		t.Fatalf("switch side: %v", sendErr)
	}
	w := []want{{CheckLACPMismatch, "bond0/m0", Error}}
	if g := got(r); fmt.Sprint(g) != fmt.Sprint(w) {
		t.Fatalf("findings %v, want %v", g, w)
	}
	d := r.Findings[0].Detail
	if !strings.Contains(d, "system "+switchSystem.String()+", key 17, port 5") || !strings.Contains(d, "active-backup") {
		t.Errorf("detail %q does not name the switch's LACP system", d)
	}
	// eth1, bond0's other member, does not exist in the lab: reported as
	// not watched. bond1 is 802.3ad: its members must not be listened on.
	var reason string
	for _, s := range r.Skipped {
		if s.ID == CheckLACPMismatch {
			reason = s.Reason
		}
	}
	if !strings.Contains(reason, "eth1") || strings.Contains(reason, "eth2") || strings.Contains(reason, "eth3") {
		t.Errorf("listen errors %q: want eth1 only", reason)
	}
}

// TestLACPQuietMember checks the listener's negative on the wire: frames
// of other kinds on a member raise nothing.
func TestLACPQuietMember(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "ip")
	ns := netlab.TestNS(t, "lacpq")
	if _, err := ns.Sh("ip link add m0 type veth peer name m1; ip link set m0 up; ip link set m1 up"); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ns.Do(func() error {
			ifi, err := net.InterfaceByName("m1")
			if err != nil {
				return err
			}
			c, err := packet.Listen(ifi, packet.Raw, EtherTypeSlow, nil)
			if err != nil {
				return err
			}
			defer c.Close()
			marker := lacpdu(switchPortMAC, switchSystem, 17, 5)
			marker[14] = 0x02
			for {
				select {
				case <-done:
					return nil
				case <-time.After(100 * time.Millisecond):
				}
				c.WriteTo(marker, &packet.Addr{HardwareAddr: SlowProtocolsMAC})
			}
		})
	}()
	var seen map[string][]LACPDU
	err := ns.Do(func() error {
		var err error
		seen, err = PacketListener{}.Listen(context.Background(), []string{"m0"}, time.Second)
		return err
	})
	close(done)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if len(seen["m0"]) != 0 {
		t.Errorf("marker PDUs counted as LACP: %v", seen)
	}
}
