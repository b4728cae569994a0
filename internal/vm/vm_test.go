package vm_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/internal/testbin"
	"github.com/selfannounce/selfannounce/internal/testenv"
	"github.com/selfannounce/selfannounce/internal/vm"
)

// systemd as PID 1: the Debian kernel boots the host's systemd on the
// overlay root, the script runs as root from the generated unit, loads a
// module the host kernel lacks, and its files and exit status come back.
// The plain init is TestVM's.
func TestRunSystemd(t *testing.T) {
	if vm.Inside() {
		t.Skip("host-side test")
	}
	k := vm.DebianKernel(t)
	res, err := vm.Run(context.Background(), vm.Options{
		Name: "systemd",
		Init: vm.InitSystemd,
		Dir:  t.TempDir(),
		Script: `set -e
cat /proc/1/comm > $VM_RESULTS/pid1
systemctl is-active vm-script.service > $VM_RESULTS/unit || true
uname -r > $VM_RESULTS/uname
id -u > $VM_RESULTS/uid
modprobe bonding
ip link add bond0 type bond mode active-backup
cat /sys/class/net/bond0/bonding/mode > $VM_RESULTS/mode
touch /usr/share/written-on-overlay
mount > $VM_RESULTS/mounts
exit 7`,
		Timeout: 6 * time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("boot %v total %v", res.Boot, res.Total)
	if res.Exit != 7 {
		t.Errorf("exit %d, want 7", res.Exit)
	}
	read := func(n string) string {
		b, err := os.ReadFile(filepath.Join(res.Dir, n))
		if err != nil {
			t.Error(err)
		}
		return strings.TrimSpace(string(b))
	}
	if got := read("uname"); got != k.ABI {
		t.Errorf("uname -r %q, want %q", got, k.ABI)
	}
	if !res.PoweredOff {
		t.Error("systemd did not power the machine off after the script")
	}
	if got := read("pid1"); got != "systemd" {
		t.Errorf("PID 1 is %q, want systemd", got)
	}
	if got := read("unit"); got != "activating" {
		t.Errorf("vm-script.service is %q while its script runs, want activating", got)
	}
	if got := read("uid"); got != "0" {
		t.Errorf("uid %q", got)
	}
	if got := read("mode"); !strings.HasPrefix(got, "active-backup") {
		t.Errorf("bond mode %q", got)
	}
	if _, err := os.Stat("/usr/share/written-on-overlay"); err == nil {
		t.Error("a write inside the VM reached the host root")
	}
}

// A kernel panic ends the run at once with the console tail.
func TestPanicIsReported(t *testing.T) {
	if vm.Inside() {
		t.Skip("host-side test")
	}
	vm.DebianKernel(t)
	start := time.Now()
	res, err := vm.Run(context.Background(), vm.Options{
		Name:    "panic",
		Dir:     t.TempDir(),
		Script:  "echo c > /proc/sysrq-trigger; sleep 600",
		Timeout: 3 * time.Minute,
	})
	if !errors.Is(err, vm.ErrPanic) {
		t.Fatalf("err %v, want ErrPanic", err)
	}
	if !strings.Contains(err.Error(), "Kernel panic") {
		t.Errorf("error lacks the console line: %v", err)
	}
	t.Logf("panic reported %v after start (boot %v)", time.Since(start), res.Boot)
}

// RunTests: the inner tests below run inside one VM and come back as
// subtests of TestVM.
func TestVM(t *testing.T) {
	vm.RunTests(t, vm.Options{Timeout: 4 * time.Minute}, "^TestInVM")
}

func TestInVMKernel(t *testing.T) {
	vm.RequireInside(t)
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(strings.TrimSpace(string(b)), "-amd64") {
		t.Errorf("not the Debian kernel: %s", b)
	}
	if p := testbin.Announce(t); !strings.HasPrefix(p, vm.GuestRunDir) {
		t.Errorf("announce %s: not the host-built one", p)
	}
	t.Run("sub", func(t *testing.T) { t.Log("a subtest") })
}

func TestInVMSkip(t *testing.T) {
	vm.RequireInside(t)
	t.Skip("skips are reported")
}

// Xen: the hypervisor boots with the same kernel as its PV dom0, and the
// script runs in dom0.
func TestRunXen(t *testing.T) {
	if vm.Inside() {
		t.Skip("host-side test")
	}
	vm.DebianKernel(t)
	if _, err := vm.XenHypervisor(); err != nil {
		testenv.Skip(t, err.Error())
	}
	res, err := vm.Run(context.Background(), vm.Options{
		Name: "xen",
		Xen:  true,
		Dir:  t.TempDir(),
		Script: `cat /sys/hypervisor/type > $VM_RESULTS/type
cat /sys/hypervisor/guest_type > $VM_RESULTS/guest_type
exit 3`,
		Timeout: 6 * time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("boot %v total %v", res.Boot, res.Total)
	if !res.PoweredOff {
		t.Error("dom0's poweroff did not end the machine")
	}
	if res.Exit != 3 {
		t.Errorf("exit %d, want 3", res.Exit)
	}
	for f, want := range map[string]string{"type": "xen", "guest_type": "PV"} {
		b, err := os.ReadFile(filepath.Join(res.Dir, f))
		if got := strings.TrimSpace(string(b)); err != nil || got != want {
			t.Errorf("/sys/hypervisor/%s = %q (%v), want %q", f, got, err, want)
		}
	}
	if !strings.Contains(vm.Tail(res.Console, 400), "(XEN)") {
		t.Error("no Xen lines on the console")
	}
}
