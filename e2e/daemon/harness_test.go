//go:build linux

// Package daemon_test runs the real `announce daemon` binary inside the
// migration lab and judges it only by what the switch, the host bridge and
// pinging peers see: captured frames, forwarding databases, ping replies.
package daemon_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/selfannounce/selfannounce/internal/lab"
	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/proctest"
	"github.com/selfannounce/selfannounce/internal/testbin"
	"github.com/selfannounce/selfannounce/internal/testenv"
	"github.com/selfannounce/selfannounce/internal/wiretest"
)

// metricsAddr is private to each namespace, so every daemon can use it.
const metricsAddr = "127.0.0.1:9474"

func requireE2E(t *testing.T) string {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "ip", "bridge", "ping")
	return testbin.Announce(t)
}

// newLab builds the migration lab; it is torn down after everything the
// test started later (daemons, captures) has stopped.
func newLab(t *testing.T, opts lab.Options) *lab.Lab {
	t.Helper()
	l, err := lab.New(opts)
	if err != nil {
		t.Fatalf("lab: %v", err)
	}
	t.Cleanup(l.Close)
	return l
}

// labConfig gives the lab's silent VM its identity on the destination vif.
func labConfig(extra string) string {
	return fmt.Sprintf("guests:\n  - port: %q\n    mac: %q\n    ips: [%q, %q]\n%s", lab.DstVif, lab.GuestMAC, lab.GuestIP, lab.GuestIP6, extra)
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(f, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// daemonProc is a running `announce daemon` inside a namespace.
type daemonProc struct {
	*proctest.Proc
	t  *testing.T
	ns *netlab.NS
}

// startDaemon runs the daemon in ns with JSON logs at debug level and
// waits for its "watching" line.
func startDaemon(t *testing.T, bin string, ns *netlab.NS, config string, extra ...string) *daemonProc {
	t.Helper()
	args := append([]string{"daemon", "--config", config, "--log-format", "json", "--log-level", "debug", "--metrics-listen", metricsAddr}, extra...)
	d := &daemonProc{t: t, ns: ns, Proc: proctest.Start(t, ns, bin, args...)}
	t.Cleanup(func() {
		d.stop(5 * time.Second)
		if t.Failed() {
			t.Logf("daemon log (%s):\n%s", ns.Name, d.Stderr())
		}
	})
	if _, ok := d.waitLog(10*time.Second, func(l proctest.Log) bool { return strings.Contains(l.Msg, "watching") }); !ok {
		t.Fatalf("daemon in %s logged no \"watching\" line within 10s", ns.Name)
	}
	return d
}

// waitLog waits for an entry matching pred.
func (d *daemonProc) waitLog(timeout time.Duration, pred func(proctest.Log) bool) (proctest.Log, bool) {
	if ls := d.WaitLogs(timeout, 1, pred); len(ls) > 0 {
		return ls[0], true
	}
	return proctest.Log{}, false
}

// bursts returns the "burst" entries (one per finished burst) for mac, or
// for every MAC when mac is "".
func (d *daemonProc) bursts(mac string) []proctest.Log {
	return d.Logs(func(l proctest.Log) bool {
		return l.Msg == "burst" && (mac == "" || strings.EqualFold(l.Str("mac"), mac))
	})
}

func (d *daemonProc) signal(s os.Signal) {
	if err := d.Signal(s); err != nil {
		d.t.Errorf("signal %v: %v", s, err)
	}
}

// stop sends SIGTERM and waits; a daemon that hangs is killed and reported.
func (d *daemonProc) stop(timeout time.Duration) error {
	err := d.Stop(timeout)
	if errors.Is(err, proctest.ErrKilled) {
		d.t.Errorf("daemon did not exit within %v of SIGTERM", timeout)
	}
	return err
}

func (d *daemonProc) metric(t *testing.T, key string) float64 {
	t.Helper()
	m, err := proctest.Metrics(d.ns, metricsAddr)
	if err != nil {
		t.Fatalf("scraping metrics: %v", err)
	}
	v, ok := m[key]
	if !ok {
		t.Fatalf("metric %s not exposed", key)
	}
	return v
}

// Frame kinds the capture recognises.
const (
	kindRARP  = "rarp"
	kindGARP  = "garp"
	kindNA    = "na"
	kindOther = "other"
	// Not announcements: pings, to trace where a lost one died.
	kindEchoRequest = "echo-request"
	kindEchoReply   = "echo-reply"
)

// frame is one captured frame, stamped by the kernel on reception.
type frame struct {
	At   time.Time
	Src  string // lower-case MAC
	Kind string
	IP   netip.Addr // GARP sender/target, NA target
	Seq  int        // ICMP echo sequence
}

// capture records the frames crossing one interface, as classify sees them.
type capture struct{ *wiretest.Capture }

// startCapture records the frames entering ns through ifname: on a switch
// port, what the host behind it sent.
func startCapture(t *testing.T, ns *netlab.NS, ifname string) *capture {
	t.Helper()
	return &capture{wiretest.Start(t, ns, ifname, wiretest.In)}
}

// startEgressCapture records the frames ns transmits on ifname: on a switch
// port, what the switch forwarded or flooded to the host behind it.
func startEgressCapture(t *testing.T, ns *netlab.NS, ifname string) *capture {
	t.Helper()
	return &capture{wiretest.Start(t, ns, ifname, wiretest.Out)}
}

// classify recognises announcements: RARP (0x8035, opcode 3), gratuitous
// ARP (sender IP = target IP) and unsolicited neighbour advertisements.
func classify(b []byte) (frame, bool) {
	if len(b) < 14 {
		return frame{}, false
	}
	f := frame{Src: net.HardwareAddr(b[6:12]).String(), Kind: kindOther}
	et := binary.BigEndian.Uint16(b[12:14])
	p := b[14:]
	if et == 0x8100 && len(p) >= 4 {
		et = binary.BigEndian.Uint16(p[2:4])
		p = p[4:]
	}
	switch et {
	case 0x8035:
		if len(p) >= 8 && binary.BigEndian.Uint16(p[6:8]) == 3 {
			f.Kind = kindRARP
		}
	case 0x0800:
		// ICMP echo: request or reply, with its sequence number, to see
		// where a lost ping died.
		if len(p) >= 28 && p[9] == 1 {
			ihl := int(p[0]&0xf) * 4
			if len(p) >= ihl+8 && (p[ihl] == 8 || p[ihl] == 0) {
				f.Kind = kindEchoRequest
				if p[ihl] == 0 {
					f.Kind = kindEchoReply
				}
				f.Seq = int(binary.BigEndian.Uint16(p[ihl+6 : ihl+8]))
			}
		}
	case 0x0806:
		if len(p) >= 28 {
			sip, _ := netip.AddrFromSlice(p[14:18])
			tip, _ := netip.AddrFromSlice(p[24:28])
			if sip == tip {
				f.Kind, f.IP = kindGARP, sip
			}
		}
	case 0x86dd:
		if len(p) >= 40+24 && p[6] == 58 && p[40] == 136 {
			f.Kind = kindNA
			f.IP, _ = netip.AddrFromSlice(p[40+8 : 40+24])
		}
	}
	return f, true
}

// all returns the frames matching pred so far.
func (c *capture) all(pred func(frame) bool) []frame {
	var out []frame
	for _, w := range c.Frames(nil) {
		f, ok := classify(w.Data)
		f.At = w.At
		if ok && (pred == nil || pred(f)) {
			out = append(out, f)
		}
	}
	return out
}

// announcements returns the announcement frames from mac ("" = any MAC).
func (c *capture) announcements(mac string) []frame {
	mac = strings.ToLower(mac)
	return c.all(func(f frame) bool { return isAnnouncement(f) && (mac == "" || f.Src == mac) })
}

// waitFor waits until at least n frames match pred.
func (c *capture) waitFor(timeout time.Duration, n int, pred func(frame) bool) []frame {
	end := time.Now().Add(timeout)
	for {
		fs := c.all(pred)
		if len(fs) >= n || time.Now().After(end) {
			return fs
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func isAnnouncementFrom(mac string) func(frame) bool {
	mac = strings.ToLower(mac)
	return func(f frame) bool { return isAnnouncement(f) && f.Src == mac }
}

func isAnnouncement(f frame) bool {
	return f.Kind == kindRARP || f.Kind == kindGARP || f.Kind == kindNA
}

// carrierWatch timestamps the moments links gain carrier in a namespace,
// from the kernel's own rtnetlink notifications: the reference point for
// reaction latencies.
type carrierWatch struct {
	fd   int
	mu   sync.Mutex
	up   map[string]time.Time // first carrier-up per link name
	done chan struct{}
}

func watchCarrier(t *testing.T, ns *netlab.NS) *carrierWatch {
	t.Helper()
	w := &carrierWatch{up: map[string]time.Time{}, done: make(chan struct{})}
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
		if err != nil {
			return err
		}
		w.fd = fd
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
			return err
		}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 50000}); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_LINK})
	})
	if err != nil {
		t.Fatalf("rtnetlink monitor: %v", err)
	}
	stop := make(chan struct{})
	go w.loop(t, stop)
	t.Cleanup(func() {
		close(stop)
		<-w.done
		unix.Close(w.fd)
	})
	return w
}

func (w *carrierWatch) loop(t *testing.T, stop chan struct{}) {
	defer close(w.done)
	buf := make([]byte, 1<<16)
	oob := make([]byte, 256)
	for {
		select {
		case <-stop:
			return
		default:
		}
		n, oobn, _, _, err := unix.Recvmsg(w.fd, buf, oob, 0)
		if err == unix.ENOBUFS {
			t.Errorf("rtnetlink monitor overran: carrier timestamps are incomplete")
			continue
		}
		if err != nil {
			continue
		}
		at := time.Now()
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				if m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= 16 {
					at = time.Unix(int64(binary.NativeEndian.Uint64(m.Data[0:8])), int64(binary.NativeEndian.Uint64(m.Data[8:16])))
				}
			}
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		for _, m := range msgs {
			if m.Header.Type != unix.RTM_NEWLINK || len(m.Data) < unix.SizeofIfInfomsg {
				continue
			}
			flags := binary.NativeEndian.Uint32(m.Data[8:12])
			if flags&unix.IFF_LOWER_UP == 0 {
				continue
			}
			attrs, err := syscall.ParseNetlinkRouteAttr(&m)
			if err != nil {
				continue
			}
			for _, a := range attrs {
				if a.Attr.Type == unix.IFLA_IFNAME {
					name := strings.TrimRight(string(a.Value), "\x00")
					w.mu.Lock()
					if _, seen := w.up[name]; !seen {
						w.up[name] = at
					}
					w.mu.Unlock()
				}
			}
		}
	}
}

func (w *carrierWatch) at(name string) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t, ok := w.up[name]
	return t, ok
}

// batch runs `ip -batch -` in ns: many link changes in one process, as
// close together as the kernel allows.
func batch(t *testing.T, ns *netlab.NS, lines []string) {
	t.Helper()
	cmd := ns.Cmd("ip", "-force", "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ip -batch in %s: %v: %s", ns.Name, err, out)
	}
}

func sh(t *testing.T, ns *netlab.NS, script string) string {
	t.Helper()
	out, err := ns.Sh(script)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func kinds(fs []frame) map[string]int {
	m := map[string]int{}
	for _, f := range fs {
		m[f.Kind]++
	}
	return m
}

func requireBash(t *testing.T) { t.Helper(); testenv.RequireCommands(t, "bash") }

// newNS is a namespace removed when t ends.
func newNS(t *testing.T, role string) *netlab.NS {
	t.Helper()
	return netlab.TestNS(t, role)
}
