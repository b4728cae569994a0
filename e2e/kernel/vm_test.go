// Package kernel_test runs the end-to-end tests that need Debian's kernel
// (bonding, 802.1Q, vlan_filtering, the OVS kernel datapath, a real sysfs)
// inside one VM per package run: TestKernelVM boots it and reports every
// TestInVM* test of this package, run inside, as its subtest. Each of
// those starts with vm.RequireInside, so outside the VM they skip.
package kernel_test

import (
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/internal/vm"
)

// TestKernelVM is the package's only boot: a boot costs 10-25 s under TCG.
func TestKernelVM(t *testing.T) {
	vm.RunTests(t, vm.Options{Name: "kernel", MemMB: 2048, CPUs: 2, Timeout: 25 * time.Minute}, "^TestInVM")
}
