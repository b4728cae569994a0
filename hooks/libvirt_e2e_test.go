//go:build linux

package hooks_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/announce/libvirtev"
	"github.com/selfannounce/selfannounce/internal/libvirttest"
	"github.com/selfannounce/selfannounce/internal/netlab"
)

// TestLibvirtHookRealLibvirtd installs the hook in two real libvirtds (each
// in its own network namespace) and live-migrates a TCG guest between them:
// libvirt itself supplies the argv, the environment and the domain XML on
// stdin. libvirt scrubs a hook's environment down to a few variables, PATH
// among them, so the stand-ins reach the hook through libvirtd's PATH.
func TestLibvirtHookRealLibvirtd(t *testing.T) {
	libvirttest.Require(t)
	src := newLab(t, hang, false)
	dst := newLab(t, hang, false)
	hosts := make([]*libvirttest.Daemon, 2)
	for i, l := range []*lab{src, dst} {
		b, err := os.ReadFile(script(t, "libvirt-qemu"))
		if err != nil {
			t.Fatal(err)
		}
		installed := filepath.Join(l.dir, "selfannounce")
		if err := os.WriteFile(installed, b, 0o755); err != nil {
			t.Fatal(err)
		}
		ns := netlab.TestNS(t, []string{"hksrc", "hkdst"}[i])
		ns.MustRun(t, "ip", "link", "add", "br0", "type", "bridge")
		ns.MustRun(t, "ip", "link", "set", "br0", "up")
		hosts[i] = libvirttest.Start(t, libvirttest.Options{NS: ns, QEMUHooks: []string{installed}, PathPrepend: l.bin})
	}
	a, b := hosts[0], hosts[1]

	const name, mac = "g-hook", "52:54:00:5a:02:01"
	a.DefineAndStart(t, name, libvirttest.DomainXML(name, libvirttest.Interface{Bridge: "br0", MAC: mac}))
	// A plain start is no arrival.
	argvIs(t, src.launches(0))

	start := time.Now()
	a.Migrate(t, name, b)
	took := time.Since(start)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ifs, err := libvirtev.DomainInterfaces(ctx, b.Socket, name)
	if err != nil || len(ifs) != 1 {
		t.Fatalf("destination interfaces: %+v, %v", ifs, err)
	}
	argvIs(t, dst.launches(1), []string{"--vif", ifs[0].Dev, "--mac", mac, "--wait-ready=600s", "--log-format=console"})
	dst.checkDetached()
	dst.syslog.expect(t, "libvirt: domain "+name+": incoming migration")
	dst.syslog.expect(t, "libvirt: domain "+name+": handed "+ifs[0].Dev+" ("+mac+")")
	argvIs(t, src.launches(0))
	// The stand-in announce hangs for hangFor; had the hook waited for it,
	// libvirt would have too, and it would be over by now: checkDetached
	// above found it still running. How long the migration took is the
	// machine's business and only logged.
	if st := b.Virsh(t, "domstate", "--reason", name); !strings.Contains(st, "running (migrated)") {
		t.Fatalf("domstate on destination: %q", st)
	}
	t.Logf("migration with hooks took %v; destination tap %s", took, ifs[0].Dev)
}
