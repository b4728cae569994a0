//go:build linux

// Package ovstest starts a private Open vSwitch (ovsdb-server plus
// ovs-vswitchd with the userspace datapath) inside a test's network
// namespace. Every file, socket and log lives in a fresh directory, so tests
// never touch a host OVS or each other, and both daemons are stopped when the
// test ends, pass or fail.
package ovstest

import (
	"bytes"
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

// OVS is one running private Open vSwitch.
type OVS struct {
	NS  *netlab.NS
	dir string
	db  *daemon
	sw  *daemon

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
	testenv.RequireCommands(t, "ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-appctl")
	if _, err := os.Stat(Schema); err != nil {
		testenv.Skip(t, "OVS schema missing: "+err.Error())
	}
	// OVS falls back to this directory for a few defaults even when every
	// path is given explicitly; creating it is harmless.
	if err := os.MkdirAll("/var/run/openvswitch", 0o755); err != nil {
		t.Fatal(err)
	}
	// A short directory under /tmp rather than t.TempDir(): unix socket
	// paths (bridge .mgmt sockets) must fit in 108 bytes for Go's dialer.
	dir, err := os.MkdirTemp("", "ovs")
	if err != nil {
		t.Fatal(err)
	}
	o := &OVS{NS: ns, dir: dir}
	t.Cleanup(func() {
		o.stop()
		if t.Failed() {
			o.dumpLogs(t)
		}
		os.RemoveAll(dir)
	})
	if err := os.MkdirAll(filepath.Join(dir, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ovsdb-tool", "create", o.dbFile(), Schema).CombinedOutput(); err != nil {
		t.Fatalf("ovsdb-tool create: %v: %s", err, out)
	}
	o.startDB(t)
	o.Vsctl(t, "--no-wait", "init")
	o.startSwitch(t)
	return o
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

func (o *OVS) startDB(t testing.TB) {
	t.Helper()
	os.Remove(o.DBSocket())
	o.db = o.spawn(t, "ovsdb-server", o.dbFile(),
		"--remote=punix:"+o.DBSocket(),
		"--pidfile="+filepath.Join(o.dir, "ovsdb-server.pid"),
		"--unixctl="+filepath.Join(o.dir, "ovsdb-server.ctl"),
		"--log-file="+filepath.Join(o.dir, "ovsdb-server.log"),
		"-vconsole:off")
	o.waitSocket(t, o.db, o.DBSocket())
}

func (o *OVS) startSwitch(t testing.TB) {
	t.Helper()
	ctl := filepath.Join(o.dir, "ovs-vswitchd.ctl")
	os.Remove(ctl)
	o.sw = o.spawn(t, "ovs-vswitchd", o.DBAddr(),
		"--pidfile="+filepath.Join(o.dir, "ovs-vswitchd.pid"),
		"--unixctl="+ctl,
		"--log-file="+filepath.Join(o.dir, "ovs-vswitchd.log"),
		"--disable-system",
		"-vconsole:off")
	o.waitSocket(t, o.sw, ctl)
	// The control socket appears before the bridges are configured. A
	// vsctl change waits for ovs-vswitchd to catch up (cur_cfg), but only
	// if it really changes something, hence a fresh value each time.
	o.starts++
	o.Vsctl(t, "set", "Open_vSwitch", ".", fmt.Sprintf("external_ids:ovstest-start=%d", o.starts))
}

// spawn runs a daemon in the foreground inside the namespace; `ip netns
// exec` execs it, so the process we hold is the daemon itself.
func (o *OVS) spawn(t testing.TB, name string, args ...string) *daemon {
	t.Helper()
	out, err := os.OpenFile(filepath.Join(o.dir, name+".out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := o.NS.Cmd(name, args...)
	cmd.Env = o.env()
	cmd.Dir = o.dir
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		out.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	d := &daemon{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		out.Close()
		close(d.done)
	}()
	return d
}

func (o *OVS) waitSocket(t testing.TB, d *daemon, path string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-d.done:
			t.Fatalf("%s exited during start-up: %v\n%s", d.name, d.err, o.readLog(d.name))
		default:
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: no socket %s after 15s\n%s", d.name, path, o.readLog(d.name))
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
	o.startDB(t)
}

// StopDB stops ovsdb-server without restarting it; StartDB brings it back.
func (o *OVS) StopDB(t testing.TB) { o.db.stop() }

// StartDB starts ovsdb-server after StopDB.
func (o *OVS) StartDB(t testing.TB) {
	t.Helper()
	o.startDB(t)
}

// RestartSwitch stops ovs-vswitchd and starts it again; ports keep their
// database rows but the datapath and the OpenFlow sockets are rebuilt.
func (o *OVS) RestartSwitch(t testing.TB) {
	t.Helper()
	o.sw.stop()
	o.startSwitch(t)
}

// Vsctl runs ovs-vsctl against this OVS and returns its trimmed output. By
// default it waits until ovs-vswitchd has applied the change.
func (o *OVS) Vsctl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := o.run("ovs-vsctl", append([]string{"--db=" + o.DBAddr(), "--timeout=20"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Appctl runs ovs-appctl against this ovs-vswitchd.
func (o *OVS) Appctl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := o.run("ovs-appctl", append([]string{"-t", filepath.Join(o.dir, "ovs-vswitchd.ctl"), "--timeout=20"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return out
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
// module is not available here).
func (o *OVS) AddBridge(t testing.TB, name string) {
	t.Helper()
	o.Vsctl(t, "add-br", name, "--", "set", "Bridge", name, "datapath_type=netdev")
}

// OFPort returns the interface's OpenFlow port number, waiting until
// ovs-vswitchd has assigned one.
func (o *OVS) OFPort(t testing.TB, iface string) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out := o.Vsctl(t, "get", "Interface", iface, "ofport")
		var n int
		if _, err := fmt.Sscan(out, &n); err == nil && n > 0 {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("interface %s has no ofport (got %q)", iface, out)
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

func (o *OVS) dumpLogs(t testing.TB) {
	t.Logf("private OVS logs:\n%s%s", o.readLog("ovsdb-server"), o.readLog("ovs-vswitchd"))
}
