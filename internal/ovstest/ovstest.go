//go:build linux

// Package ovstest starts a private Open vSwitch (ovsdb-server plus
// ovs-vswitchd, with the userspace datapath, or the kernel's where the
// openvswitch module loads) inside a network namespace.
// Every file, socket and log lives in a fresh directory, so tests and the lab
// never touch a host OVS or each other. Start ties it to a test (stopped when
// the test ends, pass or fail); Launch is the same for programs (the lab).
package ovstest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/testenv"
)

// Schema is the OVS database schema Debian's openvswitch-common installs.
const Schema = "/usr/share/openvswitch/vswitch.ovsschema"

// Commands are the OVS programs Launch and the helpers run.
var Commands = []string{"ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-appctl"}

// OVS is one running private Open vSwitch.
type OVS struct {
	NS  *netlab.NS
	dir string
	db  *daemon
	sw  *daemon
	// kernel: bridges on the kernel datapath (datapath_type=system).
	kernel bool

	starts int
}

type daemon struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start starts ovsdb-server and ovs-vswitchd inside ns. It skips t (or fails
// it under SELFANNOUNCE_E2E=require) without root or without the OVS programs.
func Start(t testing.TB, ns *netlab.NS) *OVS {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, Commands...)
	if _, err := os.Stat(Schema); err != nil {
		testenv.Skip(t, "OVS schema missing: "+err.Error())
	}
	o, err := Launch(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		o.stop()
		if t.Failed() {
			o.dumpLogs(t)
		}
		os.RemoveAll(o.dir)
	})
	return o
}

// Launch starts ovsdb-server and ovs-vswitchd inside ns; Close stops them
// and removes their directory. On error nothing is left running.
func Launch(ns *netlab.NS) (*OVS, error) { return launch(ns, false) }

// LaunchKernel is Launch with the bridges on the kernel datapath: the
// openvswitch module must load (a Debian kernel does; some CI kernels do
// not). The datapath belongs to ns, so instances in other namespaces do not
// see each other's.
func LaunchKernel(ns *netlab.NS) (*OVS, error) {
	if out, err := exec.Command("modprobe", "openvswitch").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("modprobe openvswitch: %v: %s", err, bytes.TrimSpace(out))
	}
	return launch(ns, true)
}

// StartKernel is Start with LaunchKernel's kernel datapath.
func StartKernel(t testing.TB, ns *netlab.NS) *OVS {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, append(Commands, "modprobe")...)
	o, err := LaunchKernel(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		o.stop()
		if t.Failed() {
			o.dumpLogs(t)
		}
		os.RemoveAll(o.dir)
	})
	return o
}

// Kernel says the bridges are on the kernel datapath.
func (o *OVS) Kernel() bool { return o.kernel }

func launch(ns *netlab.NS, kernel bool) (*OVS, error) {
	// OVS falls back to this directory for a few defaults even when every
	// path is given explicitly; creating it is harmless.
	if err := os.MkdirAll("/var/run/openvswitch", 0o755); err != nil {
		return nil, err
	}
	// A short directory under /tmp rather than t.TempDir(): unix socket
	// paths (bridge .mgmt sockets) must fit in 108 bytes for Go's dialer.
	dir, err := os.MkdirTemp("", "ovs")
	if err != nil {
		return nil, err
	}
	o := &OVS{NS: ns, dir: dir, kernel: kernel}
	if err := o.launch(); err != nil {
		logs := o.Logs()
		o.Close()
		if logs != "" {
			err = fmt.Errorf("%w\n%s", err, logs)
		}
		return nil, err
	}
	return o, nil
}

func (o *OVS) launch() error {
	if err := os.MkdirAll(filepath.Join(o.dir, "etc"), 0o755); err != nil {
		return err
	}
	if out, err := exec.Command("ovsdb-tool", "create", o.dbFile(), Schema).CombinedOutput(); err != nil {
		return fmt.Errorf("ovsdb-tool create: %v: %s", err, out)
	}
	if err := o.startDB(); err != nil {
		return err
	}
	if _, err := o.VsctlErr("--no-wait", "init"); err != nil {
		return err
	}
	return o.startSwitch()
}

// Close stops both daemons and removes the directory.
func (o *OVS) Close() {
	o.stop()
	os.RemoveAll(o.dir)
}

// Dir is the private directory holding the database, sockets and logs.
func (o *OVS) Dir() string { return o.dir }

// RunDir is where ovs-vswitchd puts the bridges' <bridge>.mgmt sockets.
func (o *OVS) RunDir() string { return o.dir }

// DBSocket is the path of ovsdb-server's unix socket.
func (o *OVS) DBSocket() string { return filepath.Join(o.dir, "db.sock") }

// DBAddr is the OVSDB address in OVS's connection syntax.
func (o *OVS) DBAddr() string { return "unix:" + o.DBSocket() }

func (o *OVS) dbFile() string { return filepath.Join(o.dir, "conf.db") }

func (o *OVS) env() []string {
	return append(os.Environ(),
		"OVS_RUNDIR="+o.dir,
		"OVS_DBDIR="+o.dir,
		"OVS_LOGDIR="+o.dir,
		"OVS_SYSCONFDIR="+filepath.Join(o.dir, "etc"),
		"OVS_PKGDATADIR=/usr/share/openvswitch",
	)
}

func (o *OVS) startDB() error {
	os.Remove(o.DBSocket())
	d, err := o.spawn("ovsdb-server", o.dbFile(),
		"--remote=punix:"+o.DBSocket(),
		"--pidfile="+filepath.Join(o.dir, "ovsdb-server.pid"),
		"--unixctl="+filepath.Join(o.dir, "ovsdb-server.ctl"),
		"--log-file="+filepath.Join(o.dir, "ovsdb-server.log"),
		"-vconsole:off")
	if err != nil {
		return err
	}
	o.db = d
	return o.waitSocket(d, o.DBSocket())
}

func (o *OVS) startSwitch() error {
	ctl := filepath.Join(o.dir, "ovs-vswitchd.ctl")
	os.Remove(ctl)
	args := []string{o.DBAddr(),
		"--pidfile=" + filepath.Join(o.dir, "ovs-vswitchd.pid"),
		"--unixctl=" + ctl,
		"--log-file=" + filepath.Join(o.dir, "ovs-vswitchd.log"),
		"-vconsole:off"}
	if !o.kernel {
		args = append(args, "--disable-system")
	}
	d, err := o.spawn("ovs-vswitchd", args...)
	if err != nil {
		return err
	}
	o.sw = d
	if err := o.waitSocket(d, ctl); err != nil {
		return err
	}
	// The control socket appears before the bridges are configured. A
	// vsctl change waits for ovs-vswitchd to catch up (cur_cfg), but only
	// if it really changes something, hence a fresh value each time.
	o.starts++
	_, err = o.VsctlErr("set", "Open_vSwitch", ".", fmt.Sprintf("external_ids:ovstest-start=%d", o.starts))
	return err
}

// spawn runs a daemon in the foreground inside the namespace; `ip netns
// exec` execs it, so the process we hold is the daemon itself.
func (o *OVS) spawn(name string, args ...string) (*daemon, error) {
	out, err := os.OpenFile(filepath.Join(o.dir, name+".out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := o.NS.Cmd(name, args...)
	cmd.Env = o.env()
	cmd.Dir = o.dir
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("start %s: %v", name, err)
	}
	d := &daemon{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		out.Close()
		close(d.done)
	}()
	return d, nil
}

func (o *OVS) waitSocket(d *daemon, path string) error {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-d.done:
			return fmt.Errorf("%s exited during start-up: %v\n%s", d.name, d.err, o.readLog(d.name))
		default:
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s: no socket %s after 15s\n%s", d.name, path, o.readLog(d.name))
}

// stop terminates d and waits; SIGKILL if it ignores SIGTERM.
func (d *daemon) stop() {
	if d == nil {
		return
	}
	select {
	case <-d.done:
		return
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(5 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
	}
}

func (o *OVS) stop() {
	o.sw.stop()
	o.db.stop()
}

// RestartDB stops ovsdb-server and starts it again on the same database
// file and socket, as a package upgrade or `ovs-ctl restart` would.
func (o *OVS) RestartDB(t testing.TB) {
	t.Helper()
	o.db.stop()
	o.StartDB(t)
}

// StopDB stops ovsdb-server without restarting it; StartDB brings it back.
func (o *OVS) StopDB(t testing.TB) { o.db.stop() }

// StartDB starts ovsdb-server after StopDB.
func (o *OVS) StartDB(t testing.TB) {
	t.Helper()
	if err := o.startDB(); err != nil {
		t.Fatal(err)
	}
}

// RestartSwitch stops ovs-vswitchd and starts it again; ports keep their
// database rows but the datapath and the OpenFlow sockets are rebuilt.
func (o *OVS) RestartSwitch(t testing.TB) {
	t.Helper()
	o.sw.stop()
	if err := o.startSwitch(); err != nil {
		t.Fatal(err)
	}
}

// Vsctl runs ovs-vsctl against this OVS and returns its trimmed output. By
// default it waits until ovs-vswitchd has applied the change.
func (o *OVS) Vsctl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := o.VsctlErr(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// VsctlErr is Vsctl for programs: it returns the error instead.
func (o *OVS) VsctlErr(args ...string) (string, error) {
	return o.run("ovs-vsctl", append([]string{"--db=" + o.DBAddr(), "--timeout=20"}, args...)...)
}

// Appctl runs ovs-appctl against this ovs-vswitchd.
func (o *OVS) Appctl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := o.AppctlErr(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// AppctlErr is Appctl for programs: it returns the error instead.
func (o *OVS) AppctlErr(args ...string) (string, error) {
	return o.run("ovs-appctl", append([]string{"-t", filepath.Join(o.dir, "ovs-vswitchd.ctl"), "--timeout=20"}, args...)...)
}

// Ofctl runs ovs-ofctl against a bridge's management socket, for test
// set-up only (installing flows); the code under test speaks OpenFlow itself.
func (o *OVS) Ofctl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := o.run("ovs-ofctl", args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (o *OVS) run(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = o.env()
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	s := strings.TrimSpace(buf.String())
	if err != nil {
		return s, fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, s)
	}
	return s, nil
}

// AddBridge creates a bridge on the userspace datapath (the OVS kernel
// module is not available on every test host), or on the kernel's with
// LaunchKernel.
func (o *OVS) AddBridge(t testing.TB, name string) {
	t.Helper()
	if err := o.AddBridgeErr(name); err != nil {
		t.Fatal(err)
	}
}

// AddBridgeErr is AddBridge for programs.
func (o *OVS) AddBridgeErr(name string) error {
	dp := "datapath_type=netdev"
	if o.kernel {
		dp = "datapath_type=system"
	}
	_, err := o.VsctlErr("add-br", name, "--", "set", "Bridge", name, dp)
	return err
}

// OFPort returns the interface's OpenFlow port number, waiting until
// ovs-vswitchd has assigned one.
func (o *OVS) OFPort(t testing.TB, iface string) int {
	t.Helper()
	n, err := o.OFPortErr(iface)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// OFPortErr is OFPort for programs.
func (o *OVS) OFPortErr(iface string) (int, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := o.VsctlErr("get", "Interface", iface, "ofport")
		if err != nil {
			return 0, err
		}
		var n int
		if _, err := fmt.Sscan(out, &n); err == nil && n > 0 {
			return n, nil
		}
		if time.Now().After(deadline) {
			return 0, errors.New("interface " + iface + " has no ofport (got " + out + ")")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (o *OVS) readLog(name string) string {
	var b strings.Builder
	for _, f := range []string{name + ".log", name + ".out"} {
		data, err := os.ReadFile(filepath.Join(o.dir, f))
		if err != nil || len(data) == 0 {
			continue
		}
		if len(data) > 8192 {
			data = data[len(data)-8192:]
		}
		fmt.Fprintf(&b, "--- %s ---\n%s\n", f, data)
	}
	return b.String()
}

// Logs returns the tails of both daemons' logs, for failure reports.
func (o *OVS) Logs() string { return o.readLog("ovsdb-server") + o.readLog("ovs-vswitchd") }

func (o *OVS) dumpLogs(t testing.TB) {
	t.Logf("private OVS logs:\n%s", o.Logs())
}
