//go:build linux

// Package integrations_test runs the real announce binary against the
// hypervisor integrations it selects guests through: xenstore (--domid,
// --vm-uuid, through the byte-exact xenstoretest server, as no xenstored can
// run without the hypervisor) and libvirt (--domain and the daemon's resume
// events, through real private libvirtds in network namespaces). What counts
// is what reaches a switch namespace beyond the host's uplink, the exit
// status, and what the command prints.
package integrations_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/selfannounce/selfannounce/announce/sniff"
	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/testbin"
	"github.com/selfannounce/selfannounce/internal/testenv"
)

// host is a hypervisor host: namespace ns with bridge br0 whose only
// non-VM port, up0, leads to the switch namespace sw (its end: swp).
type host struct {
	ns, sw *netlab.NS
}

func newHost(t *testing.T, role string) *host {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "ip", "bridge")
	h := &host{ns: netlab.TestNS(t, role), sw: netlab.TestNS(t, role+"sw")}
	if _, err := h.ns.Sh(fmt.Sprintf(`
ip link add br0 type bridge stp_state 0 forward_delay 0
ip link set br0 up
ip link add up0 type veth peer name swp netns %s
ip link set up0 master br0
ip link set up0 up
`, h.sw.Name)); err != nil {
		t.Fatal(err)
	}
	h.sw.MustRun(t, "ip", "link", "set", "swp", "up")
	return h
}

// addVif plugs a netback-like port: a veth on br0 whose other end sits in
// the guest namespace g, down, so the vif has no carrier until the "guest"
// connects (raiseCarrier).
func (h *host) addVif(t *testing.T, g *netlab.NS, name, peer string) {
	t.Helper()
	if _, err := h.ns.Sh(fmt.Sprintf(`
ip link add %[1]s type veth peer name %[2]s netns %[3]s
ip link set %[1]s address fe:ff:ff:ff:ff:ff
ip link set %[1]s master br0
ip link set %[1]s up
`, name, peer, g.Name)); err != nil {
		t.Fatal(err)
	}
}

// addTap plugs an emulated-NIC tap on br0, admin up; it has no carrier
// until a process opens it (openTap).
func (h *host) addTap(t *testing.T, name string) {
	t.Helper()
	if _, err := h.ns.Sh(fmt.Sprintf(`
ip tuntap add dev %[1]s mode tap
ip link set %[1]s master br0
ip link set %[1]s up
`, name)); err != nil {
		t.Fatal(err)
	}
}

// openTap attaches to the tap as QEMU would (which raises its carrier) and
// returns the fd: what is written to it enters the host from the guest.
func (h *host) openTap(t *testing.T, name string) int {
	t.Helper()
	fd := -1
	err := h.ns.Do(func() error {
		var err error
		fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
		return unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	})
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		t.Fatalf("open tap %s: %v", name, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// guestFrame is a broadcast frame from the guest that is no announcement
// (local experimental ethertype), so the switch can tell it from ours.
func guestFrame(mac net.HardwareAddr) []byte {
	b := make([]byte, 60)
	copy(b, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(b[6:], mac)
	b[12], b[13] = 0x88, 0xb5
	return b
}

// frameRec is one frame the switch received, with the kernel's receive time.
type frameRec struct {
	at   time.Time
	data []byte
}

// capture records every frame arriving on one interface, from the moment
// startCapture returns, with kernel timestamps on the test's clock.
type capture struct {
	conn *packet.Conn
	rc   syscall.RawConn
	mu   sync.Mutex
	got  []frameRec
	done chan struct{}
}

func startCapture(t *testing.T, ns *netlab.NS, ifname string) *capture {
	t.Helper()
	c := &capture{done: make(chan struct{})}
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		c.conn, err = packet.Listen(ifi, packet.Raw, unix.ETH_P_ALL, nil)
		return err
	})
	if err != nil {
		t.Fatalf("capture on %s/%s: %v", ns.Name, ifname, err)
	}
	rc, err := c.conn.SyscallConn()
	if err == nil {
		var serr error
		if err = rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
		}); err == nil {
			err = serr
		}
	}
	if err != nil {
		c.conn.Close()
		t.Fatalf("capture on %s/%s: %v", ns.Name, ifname, err)
	}
	c.rc = rc
	go c.loop()
	t.Cleanup(func() {
		c.conn.Close()
		<-c.done
	})
	return c
}

func (c *capture) loop() {
	defer close(c.done)
	buf := make([]byte, 2048)
	oob := make([]byte, unix.CmsgSpace(int(unsafe.Sizeof(unix.Timespec{}))))
	for {
		var (
			n, oobn int
			from    unix.Sockaddr
			rerr    error
		)
		err := c.rc.Read(func(fd uintptr) bool {
			n, oobn, _, from, rerr = unix.Recvmsg(int(fd), buf, oob, 0)
			return rerr != unix.EAGAIN
		})
		if err == nil {
			err = rerr
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return
		}
		if sll, ok := from.(*unix.SockaddrLinklayer); !ok || sll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		at, ok := rxTime(oob[:oobn])
		if !ok {
			at = time.Now()
		}
		c.mu.Lock()
		c.got = append(c.got, frameRec{at: at, data: append([]byte(nil), buf[:n]...)})
		c.mu.Unlock()
	}
}

func rxTime(oob []byte) (time.Time, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return time.Time{}, false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS &&
			len(m.Data) >= int(unsafe.Sizeof(unix.Timespec{})) {
			var ts unix.Timespec
			copy(unsafe.Slice((*byte)(unsafe.Pointer(&ts)), unsafe.Sizeof(ts)), m.Data)
			return time.Unix(ts.Unix()), true
		}
	}
	return time.Time{}, false
}

// seen is one announcement the switch received.
type seen struct {
	at time.Time
	a  sniff.Announcement
}

// announcements returns what the switch received announcing mac, in order.
func (c *capture) announcements(mac string) []seen {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []seen
	for _, f := range c.got {
		if a, ok := sniff.Decode(f.data); ok && a.MAC.String() == mac {
			out = append(out, seen{f.at, a})
		}
	}
	return out
}

// count returns how many announcements of kind k (and, when ip is not
// empty, for that address) are in ss.
func count(ss []seen, k sniff.Kind, ip string) int {
	n := 0
	for _, s := range ss {
		if s.a.Kind == k && (ip == "" || s.a.IP.String() == ip) {
			n++
		}
	}
	return n
}

func describe(ss []seen) string {
	var b strings.Builder
	for _, s := range ss {
		fmt.Fprintf(&b, "\n  %s %s %s %v", s.at.Format("15:04:05.000000"), s.a.Kind, s.a.MAC, s.a.IP)
	}
	if b.Len() == 0 {
		return " (none)"
	}
	return b.String()
}

// writeConfig writes a YAML config into a temp dir and returns its path.
func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// result is one finished run of the one-shot command.
type result struct {
	code   int
	stderr string
	took   time.Duration
	start  time.Time
}

// lastLine is the command's final stderr line: where its error goes.
func (r result) lastLine() string {
	lines := strings.Split(strings.TrimRight(r.stderr, "\n"), "\n")
	return lines[len(lines)-1]
}

// logs returns the JSON log records with message msg.
func (r result) logs(msg string) []map[string]any {
	return jsonRecords(r.stderr, msg)
}

func jsonRecords(s, msg string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(s, "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// announceCmd starts the real binary in ns with a JSON log.
func announceCmd(t *testing.T, ns *netlab.NS, args ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	bin := testbin.Announce(t)
	cmd := ns.Cmd(bin, append([]string{"--log-format", "json"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = &stderr
	return cmd, &stderr
}

// runAnnounce runs the one-shot command to completion (bounded).
func runAnnounce(t *testing.T, ns *netlab.NS, args ...string) result {
	t.Helper()
	cmd, stderr := announceCmd(t, ns, args...)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return waitAnnounce(t, cmd, stderr, start)
}

func waitAnnounce(t *testing.T, cmd *exec.Cmd, stderr *bytes.Buffer, start time.Time) result {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("announce %v still running after 60 s:\n%s", cmd.Args, stderr)
	}
	r := result{stderr: stderr.String(), took: time.Since(start), start: start}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("announce: %v", err)
	}
	t.Logf("announce %s -> exit %d in %v", strings.Join(cmd.Args[5:], " "), r.code, r.took.Round(time.Millisecond))
	return r
}

// expectError checks a failed run: the exit status, and that the error is
// one line naming the problem.
func expectError(t *testing.T, r result, code int, substr string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d; stderr:\n%s", r.code, code, r.stderr)
	}
	last := r.lastLine()
	if !strings.HasPrefix(last, "announce: ") || !strings.Contains(last, substr) {
		t.Fatalf("last stderr line %q: want \"announce: ...%s...\"; stderr:\n%s", last, substr, r.stderr)
	}
}

// lockedBuffer is a bytes.Buffer safe for a writer goroutine and readers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// daemonProc is `announce daemon` running in a host's namespace.
type daemonProc struct {
	ns     *netlab.NS
	log    *lockedBuffer
	exited chan struct{}
}

// startDaemon runs the real daemon with a JSON debug log and metrics on the
// namespace's loopback, and waits until it watches the links.
func startDaemon(t *testing.T, ns *netlab.NS, cfg string) *daemonProc {
	t.Helper()
	bin := testbin.Announce(t)
	d := &daemonProc{ns: ns, log: &lockedBuffer{}, exited: make(chan struct{})}
	cmd := ns.Cmd(bin, "--log-format", "json", "--log-level", "debug", "daemon", "--config", cfg, "--metrics-listen", metricsAddr)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = d.log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start daemon: %v", err)
	}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			fmt.Fprintln(d.log, sc.Text())
		}
	}()
	go func() {
		<-scanned
		cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-d.exited
			t.Errorf("daemon ignored SIGTERM for 5 s")
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.log)
		}
	})
	d.waitLog(t, "watching", 1, 20*time.Second)
	return d
}

// records returns the daemon's log records with message msg.
func (d *daemonProc) records(msg string) []map[string]any {
	return jsonRecords(d.log.String(), msg)
}

// waitLog waits until the daemon has logged msg at least n times.
func (d *daemonProc) waitLog(t *testing.T, msg string, n int, within time.Duration) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		recs := d.records(msg)
		if len(recs) >= n {
			return recs
		}
		select {
		case <-d.exited:
			t.Fatalf("daemon exited waiting for %q:\n%s", msg, d.log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon logged %q %d times within %v, want %d", msg, len(recs), within, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

const metricsAddr = "127.0.0.1:9474"

// metric scrapes the daemon's Prometheus endpoint from inside its namespace
// and returns the value of the sample named exactly series (0 if absent).
func (d *daemonProc) metric(t *testing.T, series string) float64 {
	t.Helper()
	var body []byte
	err := d.ns.Do(func() error {
		c, err := net.DialTimeout("tcp", metricsAddr, 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "GET /metrics HTTP/1.0\r\nHost: %s\r\n\r\n", metricsAddr)
		var buf bytes.Buffer
		_, err = buf.ReadFrom(c)
		body = buf.Bytes()
		return err
	})
	if err != nil {
		t.Fatalf("scraping metrics: %v", err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return f
		}
	}
	return 0
}

// anyAnnouncements returns every announcement the switch received.
func (c *capture) anyAnnouncements() []seen {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []seen
	for _, f := range c.got {
		if a, ok := sniff.Decode(f.data); ok {
			out = append(out, seen{f.at, a})
		}
	}
	return out
}

func writeFD(fd int, b []byte) (int, error) { return unix.Write(fd, b) }

func mustMAC(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
