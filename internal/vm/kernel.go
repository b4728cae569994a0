// Package vm boots Debian's kernel under qemu-system-x86_64 (TCG), either
// bare or as the PV dom0 of Debian's Xen hypervisor, with the host's own
// root filesystem as the read-only lower layer of an overlay. Tests use it
// for what this machine's kernel lacks (bonding, 802.1Q, vlan_filtering,
// the OVS datapath, Xen) and for a real systemd as PID 1. Everything it
// boots comes from Debian packages, unpacked at test time.
package vm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/selfannounce/selfannounce/internal/testenv"
)

// Where `make deps-vm` puts the packages and where they are unpacked.
const (
	DebDir   = "/var/cache/selfannounce/debs"
	CacheDir = "/var/cache/selfannounce"
)

// EnvKernelDeb names a linux-image .deb to use instead of the newest one
// in DebDir.
const EnvKernelDeb = "SELFANNOUNCE_KERNEL_DEB"

// Kernel is a Debian kernel package unpacked with its modules indexed.
type Kernel struct {
	Deb        string // the .deb it came from
	Root       string // what dpkg-deb -x made; holds boot/ and lib/modules/
	Vmlinuz    string
	ModulesDir string // Root/lib/modules: shared into the VM at /lib/modules
	ABI        string // e.g. 6.1.0-57-amd64
}

// ErrNoKernel says no linux-image .deb is there; `make deps-vm` gets one.
var ErrNoKernel = errors.New("no Debian kernel package in " + DebDir + " (run `make deps-vm`)")

// FindKernel unpacks the kernel package once per .deb name and returns it.
// Concurrent test processes serialise on a lock file, and an unpack that
// was cut short is redone, because only a finished one is renamed into
// place.
func FindKernel() (*Kernel, error) {
	deb := os.Getenv(EnvKernelDeb)
	if deb == "" {
		debs, _ := filepath.Glob(filepath.Join(DebDir, "linux-image-*_amd64.deb"))
		var imgs []string
		for _, d := range debs {
			b := filepath.Base(d)
			// The meta package and debug symbols hold no kernel.
			if strings.HasPrefix(b, "linux-image-amd64_") || strings.Contains(b, "-dbg") {
				continue
			}
			imgs = append(imgs, d)
		}
		if len(imgs) == 0 {
			return nil, ErrNoKernel
		}
		sort.Strings(imgs)
		deb = imgs[len(imgs)-1]
	}
	name := strings.TrimSuffix(filepath.Base(deb), ".deb")
	root := filepath.Join(CacheDir, "kernel", name)
	if err := os.MkdirAll(filepath.Dir(root), 0o755); err != nil {
		return nil, err
	}
	unlock, err := lockFile(root + ".lock")
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := os.Stat(filepath.Join(root, ".done")); err != nil {
		if err := unpackKernel(deb, root); err != nil {
			return nil, err
		}
	}
	vmlinuz, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if len(vmlinuz) != 1 {
		return nil, fmt.Errorf("%s: want one boot/vmlinuz-*, found %d", deb, len(vmlinuz))
	}
	abi := strings.TrimPrefix(filepath.Base(vmlinuz[0]), "vmlinuz-")
	return &Kernel{Deb: deb, Root: root, Vmlinuz: vmlinuz[0], ModulesDir: filepath.Join(root, "lib", "modules"), ABI: abi}, nil
}

func unpackKernel(deb, root string) error {
	tmp := root + ".tmp"
	os.RemoveAll(tmp)
	if out, err := exec.Command("dpkg-deb", "-x", deb, tmp).CombinedOutput(); err != nil {
		return fmt.Errorf("dpkg-deb -x %s: %v: %s", deb, err, bytes.TrimSpace(out))
	}
	vmlinuz, _ := filepath.Glob(filepath.Join(tmp, "boot", "vmlinuz-*"))
	if len(vmlinuz) != 1 {
		return fmt.Errorf("%s holds no single boot/vmlinuz-*", deb)
	}
	abi := strings.TrimPrefix(filepath.Base(vmlinuz[0]), "vmlinuz-")
	// The .deb ships no modules.dep: the postinst makes it.
	if out, err := exec.Command("depmod", "-b", tmp, abi).CombinedOutput(); err != nil {
		return fmt.Errorf("depmod -b %s %s: %v: %s", tmp, abi, err, bytes.TrimSpace(out))
	}
	if err := os.WriteFile(filepath.Join(tmp, ".done"), nil, 0o644); err != nil {
		return err
	}
	os.RemoveAll(root)
	return os.Rename(tmp, root)
}

func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// Available says why a VM cannot boot here, or nil.
func Available() error {
	for _, c := range []string{"qemu-system-x86_64", "dpkg-deb", "depmod", "modprobe"} {
		if _, err := exec.LookPath(c); err != nil {
			return fmt.Errorf("the kernel VM needs %s on PATH", c)
		}
	}
	if _, err := os.Stat(Busybox); err != nil {
		return fmt.Errorf("the kernel VM needs %s (busybox-static)", Busybox)
	}
	if _, err := FindKernel(); err != nil {
		return err
	}
	return nil
}

// Require skips t (a failure under SELFANNOUNCE_E2E=require) unless a VM
// can boot here. It also needs root, for the kernel's sake and the tests'.
func Require(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t)
	if err := Available(); err != nil {
		testenv.Skip(t, err.Error())
	}
}

// DebianKernel is FindKernel for tests: no kernel skips t.
func DebianKernel(t testing.TB) *Kernel {
	t.Helper()
	Require(t)
	k, err := FindKernel()
	if err != nil {
		t.Fatal(err)
	}
	return k
}
