//go:build linux

// Package libvirttest runs private libvirtd instances for tests.
//
// A system-mode libvirtd owns fixed paths (/run/libvirt, /var/lib/libvirt,
// /etc/libvirt) and its QEMU driver locks a pidfile there, so two daemons,
// or a test daemon and the host's own, cannot share them. Each daemon here
// therefore runs in its own mount namespace in which those paths are bind
// mounts of a per-test directory; only its sockets live at a path the test
// process can see. Optionally it also runs in a network namespace, so the
// vnetN taps and bridges it uses are private too, and two daemons can hold
// "the same" VM on either side of a live migration.
package libvirttest

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/testenv"
)

// Options shape a daemon.
type Options struct {
	// NS, when set, is the network namespace libvirtd (and so its QEMUs
	// and taps) runs in.
	NS *netlab.NS
	// QEMUHooks are executables installed as /etc/libvirt/hooks/qemu.d/<base
	// name> before the daemon starts; libvirtd only looks for hooks at
	// startup.
	QEMUHooks []string
	// PathPrepend is put in front of libvirtd's PATH. libvirt hands hooks a
	// scrubbed environment in which PATH is one of the few survivors, so
	// this is how a test places programs in front of a hook.
	PathPrepend string
}

// Daemon is a running private libvirtd.
type Daemon struct {
	Dir    string // everything the daemon owns
	Socket string // its read-write RPC socket
	URI    string // qemu:///system over Socket, for virsh and go-libvirt
	NS     *netlab.NS

	opts Options
	cmd  *exec.Cmd
	done chan struct{}
}

// Require skips t unless libvirtd with the QEMU driver can run here.
func Require(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "libvirtd", "virsh", "qemu-system-x86_64", "unshare", "ip")
	a, _ := filepath.Glob("/usr/lib/*/libvirt/connection-driver/libvirt_driver_qemu.so")
	b, _ := filepath.Glob("/usr/lib*/libvirt/connection-driver/libvirt_driver_qemu.so")
	if len(a)+len(b) == 0 {
		testenv.Skip(t, "libvirt QEMU driver (libvirt-daemon-driver-qemu) not installed")
	}
	if err := ensureQEMUUser(); err != nil {
		t.Fatal(err)
	}
}

// ensureQEMUUser creates the account Debian's libvirt is built to run QEMU
// as: the QEMU driver refuses to initialise when it is missing, even when
// qemu.conf overrides it.
func ensureQEMUUser() error {
	steps := [][]string{
		{"getent", "group", "kvm"}, {"groupadd", "-r", "kvm"},
		{"getent", "group", "libvirt-qemu"}, {"groupadd", "-r", "libvirt-qemu"},
		{"id", "libvirt-qemu"}, {"useradd", "-r", "-g", "libvirt-qemu", "-G", "kvm", "-d", "/var/lib/libvirt", "-s", "/usr/sbin/nologin", "libvirt-qemu"},
	}
	for i := 0; i < len(steps); i += 2 {
		if exec.Command(steps[i][0], steps[i][1:]...).Run() == nil {
			continue
		}
		if out, err := exec.Command(steps[i+1][0], steps[i+1][1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(steps[i+1], " "), err, bytes.TrimSpace(out))
		}
	}
	return nil
}

// Start runs a private libvirtd until t ends; its domains are destroyed and
// every process it started is gone by then.
func Start(t testing.TB, opts Options) *Daemon {
	t.Helper()
	Require(t)
	dir, err := os.MkdirTemp("", "libvirttest-")
	if err != nil {
		t.Fatal(err)
	}
	d := &Daemon{Dir: dir, NS: opts.NS, opts: opts}
	d.Socket = filepath.Join(dir, "sock", "libvirt-sock")
	d.URI = "qemu:///system?socket=" + d.Socket
	if err := d.layout(); err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("libvirtd log tail (%s):\n%s", dir, tail(filepath.Join(dir, "libvirtd.log"), 30))
		}
		d.teardown()
		os.RemoveAll(dir)
	})
	if err := d.start(); err != nil {
		t.Fatal(err)
	}
	return d
}

func (d *Daemon) layout() error {
	for _, sub := range []string{"etc/hooks/qemu.d", "run", "lib", "log", "sock"} {
		if err := os.MkdirAll(filepath.Join(d.Dir, sub), 0o755); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(sharedCache(), 0o755); err != nil {
		return err
	}
	uuid := make([]byte, 16)
	rand.Read(uuid)
	// A distinct host UUID per daemon: libvirt refuses a migration whose
	// source and destination report the same one.
	hostUUID := fmt.Sprintf("%x-%x-%x-%x-%x", uuid[0:4], uuid[4:6], uuid[6:8], uuid[8:10], uuid[10:16])
	conf := fmt.Sprintf(`unix_sock_dir = %q
unix_sock_group = "root"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
host_uuid = %q
log_outputs = "3:file:%s"
`, filepath.Join(d.Dir, "sock"), hostUUID, filepath.Join(d.Dir, "libvirtd.log"))
	// Containers have no cgroup controllers, no /dev namespaces to spare
	// and no virtlogd; none of that matters to a TCG guest under test.
	qemuConf := `user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
`
	if err := os.WriteFile(filepath.Join(d.Dir, "etc", "libvirtd.conf"), []byte(conf), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(d.Dir, "etc", "qemu.conf"), []byte(qemuConf), 0o644); err != nil {
		return err
	}
	for _, h := range d.opts.QEMUHooks {
		b, err := os.ReadFile(h)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(d.Dir, "etc", "hooks", "qemu.d", filepath.Base(h)), b, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// sharedCache is the one piece of state daemons share: libvirt spends
// seconds probing QEMU's capabilities at startup unless it finds them cached,
// and the cache is keyed by the QEMU binary, not by the daemon.
func sharedCache() string { return filepath.Join(os.TempDir(), "selfannounce-libvirttest-cache") }

// The script runs as the namespace's first process and execs libvirtd, so
// the process the test holds is libvirtd itself.
const startScript = `
D="$1"
for p in /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt; do mkdir -p "$p"; done
mount --bind "$D/run" /run/libvirt
mount --bind "$D/etc" /etc/libvirt
mount --bind "$D/lib" /var/lib/libvirt
mount --bind "$3" /var/cache/libvirt
mount --bind "$D/log" /var/log/libvirt
if [ -n "$2" ]; then PATH="$2:$PATH"; export PATH; fi
exec libvirtd -f /etc/libvirt/libvirtd.conf -p "$D/libvirtd.pid"
`

func (d *Daemon) start() error {
	os.Remove(d.Socket)
	args := []string{"-m", "--propagation", "private", "sh", "-ec", startScript, "sh", d.Dir, d.opts.PathPrepend, sharedCache()}
	var cmd *exec.Cmd
	if d.NS != nil {
		cmd = d.NS.Cmd("unshare", args...)
	} else {
		cmd = exec.Command("unshare", args...)
	}
	out, err := os.Create(filepath.Join(d.Dir, "stdout.log"))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		out.Close()
		return err
	}
	d.cmd = cmd
	d.done = make(chan struct{})
	go func() { cmd.Wait(); out.Close(); close(d.done) }()

	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-d.done:
			return fmt.Errorf("libvirtd exited at startup: %s\n%s", tail(filepath.Join(d.Dir, "stdout.log"), 10), tail(filepath.Join(d.Dir, "libvirtd.log"), 10))
		default:
		}
		if _, err := os.Stat(d.Socket); err == nil {
			if _, err := d.VirshErr("version"); err == nil {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("libvirtd did not answer on %s within 20s", d.Socket)
}

// Stop terminates libvirtd, leaving its domains running, the way a
// libvirtd restart on a real host does.
func (d *Daemon) Stop() {
	if d.cmd == nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
	}
	d.cmd = nil
}

// Restart stops libvirtd and starts it again on the same state.
func (d *Daemon) Restart(t testing.TB) {
	t.Helper()
	d.Stop()
	if err := d.start(); err != nil {
		t.Fatal(err)
	}
}

func (d *Daemon) teardown() {
	if d.cmd != nil {
		if names, err := d.VirshErr("list", "--name"); err == nil {
			for _, n := range strings.Fields(names) {
				d.VirshErr("destroy", n)
			}
		}
	}
	d.Stop()
	// Anything libvirt started and we could not destroy through it.
	pids, _ := filepath.Glob(filepath.Join(d.Dir, "run", "qemu", "*.pid"))
	for _, p := range pids {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// VirshErr runs virsh against the daemon.
func (d *Daemon) VirshErr(args ...string) (string, error) {
	out, err := exec.Command("virsh", append([]string{"-q", "-c", d.URI}, args...)...).CombinedOutput()
	s := strings.TrimSpace(string(out))
	if err != nil {
		return s, fmt.Errorf("virsh %s: %v: %s", strings.Join(args, " "), err, s)
	}
	return s, nil
}

// Virsh is VirshErr for tests: any error fails t.
func (d *Daemon) Virsh(t testing.TB, args ...string) string {
	t.Helper()
	out, err := d.VirshErr(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// DefineAndStart defines a domain from xml and starts it.
func (d *Daemon) DefineAndStart(t testing.TB, name, xml string) {
	t.Helper()
	f := filepath.Join(d.Dir, name+".xml")
	if err := os.WriteFile(f, []byte(xml), 0o644); err != nil {
		t.Fatal(err)
	}
	d.Virsh(t, "define", f)
	d.Virsh(t, "start", name)
}

// Migrate live-migrates name to dst, carrying the memory over a unix socket
// so it needs no network between the two namespaces.
func (d *Daemon) Migrate(t testing.TB, name string, dst *Daemon, extra ...string) {
	t.Helper()
	sock := filepath.Join(dst.Dir, "migrate-"+name+".sock")
	args := append([]string{"migrate", "--live", name, dst.URI, "--migrateuri", "unix://" + sock}, extra...)
	d.Virsh(t, args...)
}

// Interface is one NIC of a test domain.
type Interface struct {
	Bridge string
	MAC    string
}

// DomainXML is a guest that does nothing but exist: TCG, q35, no disk, 64
// MiB, NICs without option ROMs so no PXE frames leave it.
func DomainXML(name string, ifaces ...Interface) string {
	var nics strings.Builder
	for _, i := range ifaces {
		fmt.Fprintf(&nics, `    <interface type='bridge'>
      <source bridge='%s'/>
      <mac address='%s'/>
      <model type='e1000'/>
      <rom enabled='no'/>
    </interface>
`, i.Bridge, i.MAC)
	}
	return fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
%s    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
`, name, nics.String())
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
