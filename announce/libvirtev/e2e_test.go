//go:build linux

package libvirtev_test

import (
	"context"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"
	"go.uber.org/zap/zaptest"

	"github.com/selfannounce/selfannounce/announce/libvirtev"
	"github.com/selfannounce/selfannounce/internal/libvirttest"
	"github.com/selfannounce/selfannounce/internal/netlab"
)

// host is one side of a migration: a namespace with bridge br0 and a
// private libvirtd running in it.
type host struct {
	ns *netlab.NS
	lv *libvirttest.Daemon
}

func newHost(t *testing.T, role string) host {
	t.Helper()
	libvirttest.Require(t)
	ns := netlab.TestNS(t, role)
	ns.MustRun(t, "ip", "link", "add", "br0", "type", "bridge")
	ns.MustRun(t, "ip", "link", "set", "br0", "up")
	return host{ns: ns, lv: libvirttest.Start(t, libvirttest.Options{NS: ns})}
}

// checkTap asserts in kernel state that dev is a port of br0 and carries
// the guest MAC with its first byte set to 0xfe, as libvirt makes taps.
func checkTap(t *testing.T, h host, dev string, guest net.HardwareAddr) {
	t.Helper()
	out := h.ns.MustRun(t, "ip", "-o", "link", "show", "dev", dev)
	tapMAC := append(net.HardwareAddr{0xfe}, guest[1:]...)
	if !strings.Contains(out, "master br0") || !strings.Contains(out, tapMAC.String()) {
		t.Fatalf("%s in %s is not a br0 port with MAC %s: %s", dev, h.ns.Name, tapMAC, out)
	}
}

func TestDomainInterfacesRealLibvirtd(t *testing.T) {
	h := newHost(t, "lvif")
	h.lv.DefineAndStart(t, "g-if", libvirttest.DomainXML("g-if",
		libvirttest.Interface{Bridge: "br0", MAC: "52:54:00:5a:00:01"},
		libvirttest.Interface{Bridge: "br0", MAC: "52:54:00:5a:00:02"}))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ifs, err := libvirtev.DomainInterfaces(ctx, h.lv.Socket, "g-if")
	if err != nil {
		t.Fatal(err)
	}
	if len(ifs) != 2 {
		t.Fatalf("got %+v, want two interfaces", ifs)
	}
	for i, want := range []string{"52:54:00:5a:00:01", "52:54:00:5a:00:02"} {
		if ifs[i].MAC.String() != want || ifs[i].Bridge != "br0" || !strings.HasPrefix(ifs[i].Dev, "vnet") {
			t.Fatalf("interface %d = %+v, want a vnetN on br0 with MAC %s", i, ifs[i], want)
		}
		checkTap(t, h, ifs[i].Dev, ifs[i].MAC)
	}

	// The URI form reaches the same daemon.
	if ifs2, err := libvirtev.DomainInterfaces(ctx, h.lv.URI, "g-if"); err != nil || len(ifs2) != 2 || ifs2[0].Dev != ifs[0].Dev {
		t.Fatalf("via URI: %+v, %v", ifs2, err)
	}
	if _, err := libvirtev.DomainInterfaces(ctx, h.lv.Socket, "no-such-guest"); !errors.Is(err, libvirtev.ErrUnknownDomain) {
		t.Fatalf("unknown domain: err = %v, want ErrUnknownDomain", err)
	}
	h.lv.Virsh(t, "destroy", "g-if")
	if _, err := libvirtev.DomainInterfaces(ctx, h.lv.Socket, "g-if"); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Fatalf("stopped domain: err = %v, want not running", err)
	}
}

// recorder collects what a Watcher delivers.
type recorder struct {
	mu  sync.Mutex
	evs []libvirtev.Event
	ch  chan libvirtev.Event
}

func newRecorder() *recorder { return &recorder{ch: make(chan libvirtev.Event, 16)} }

func (r *recorder) add(e libvirtev.Event) {
	r.mu.Lock()
	r.evs = append(r.evs, e)
	r.mu.Unlock()
	r.ch <- e
}

func (r *recorder) all() []libvirtev.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]libvirtev.Event(nil), r.evs...)
}

func (r *recorder) next(t *testing.T, within time.Duration) libvirtev.Event {
	t.Helper()
	select {
	case e := <-r.ch:
		return e
	case <-time.After(within):
		t.Fatalf("no migration event within %v", within)
	}
	return libvirtev.Event{}
}

func startWatcher(t *testing.T, ctx context.Context, uri string) (*libvirtev.Watcher, *recorder) {
	t.Helper()
	w := libvirtev.New(uri, zaptest.NewLogger(t))
	r := newRecorder()
	done := make(chan struct{})
	go func() { w.Run(ctx, r.add); close(done) }()
	t.Cleanup(func() { <-done })
	waitConnected(t, w, true)
	return w, r
}

func waitConnected(t *testing.T, w *libvirtev.Watcher, want bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for w.Connected() != want {
		if time.Now().After(deadline) {
			t.Fatalf("watcher Connected() never became %v", want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// witness subscribes with go-libvirt directly and reports every raw
// lifecycle event, so the test knows when libvirtd has dispatched one that
// the watcher must ignore.
func witness(t *testing.T, ctx context.Context, socket string) <-chan libvirt.DomainEventLifecycleMsg {
	t.Helper()
	l := libvirt.NewWithDialer(dialers.NewLocal(dialers.WithSocket(socket)))
	if err := l.ConnectToURI(libvirt.QEMUSystem); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Disconnect() })
	ch, err := l.LifecycleEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

func waitRaw(t *testing.T, ch <-chan libvirt.DomainEventLifecycleMsg, event libvirt.DomainEventType, detail int32) {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case ev := <-ch:
			if ev.Event == int32(event) && ev.Detail == detail {
				return
			}
		case <-timeout:
			t.Fatalf("libvirtd sent no lifecycle event %d/%d", event, detail)
		}
	}
}

// TestWatcherRealMigration drives real live migrations between two
// libvirtds, each in its own network namespace, and checks the watcher
// reports exactly the arrivals: not a plain suspend/resume, not the source
// side, and again after the destination's libvirtd restarts.
func TestWatcherRealMigration(t *testing.T) {
	a := newHost(t, "lvsrc")
	b := newHost(t, "lvdst")
	const name = "g-mig"
	mac, _ := net.ParseMAC("52:54:00:5a:01:01")
	a.lv.DefineAndStart(t, name, libvirttest.DomainXML(name, libvirttest.Interface{Bridge: "br0", MAC: mac.String()}))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, onA := startWatcher(t, ctx, a.lv.URI)
	wB, onB := startWatcher(t, ctx, b.lv.Socket)
	rawA := witness(t, ctx, a.lv.Socket)

	// A plain pause and resume is no arrival.
	a.lv.Virsh(t, "suspend", name)
	a.lv.Virsh(t, "resume", name)
	waitRaw(t, rawA, libvirt.DomainEventResumed, int32(libvirt.DomainEventResumedUnpaused))
	time.Sleep(500 * time.Millisecond)
	if evs := onA.all(); len(evs) != 0 {
		t.Fatalf("plain suspend/resume reported as %+v", evs)
	}

	before := time.Now()
	a.lv.Migrate(t, name, b.lv)
	e := onB.next(t, 15*time.Second)
	if e.Domain != name || e.Detail != libvirtev.DetailMigrated || len(e.UUID) != 36 || e.At.Before(before) {
		t.Fatalf("event = %+v, want %s migrated", e, name)
	}
	// The domain really runs on B now, on a tap of B's bridge.
	if st := b.lv.Virsh(t, "domstate", "--reason", name); !strings.Contains(st, "running (migrated)") {
		t.Fatalf("domstate on destination: %q", st)
	}
	ifs, err := libvirtev.DomainInterfaces(ctx, b.lv.Socket, name)
	if err != nil || len(ifs) != 1 || ifs[0].MAC.String() != mac.String() {
		t.Fatalf("destination interfaces: %+v, %v", ifs, err)
	}
	checkTap(t, b, ifs[0].Dev, mac)
	if evs := onA.all(); len(evs) != 0 {
		t.Fatalf("source side reported %+v", evs)
	}

	// libvirtd restarts under the watcher; it must resubscribe and keep
	// reporting.
	subs := wB.Subscriptions()
	b.lv.Restart(t)
	deadline := time.Now().Add(15 * time.Second)
	for wB.Subscriptions() == subs || !wB.Connected() {
		if time.Now().After(deadline) {
			t.Fatal("watcher did not resubscribe after libvirtd restarted")
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.lv.Migrate(t, name, a.lv)
	if e := onA.next(t, 15*time.Second); e.Domain != name || e.Detail != libvirtev.DetailMigrated {
		t.Fatalf("back on A: %+v", e)
	}
	a.lv.Migrate(t, name, b.lv)
	if e := onB.next(t, 15*time.Second); e.Domain != name || e.Detail != libvirtev.DetailMigrated {
		t.Fatalf("after libvirtd restart: %+v", e)
	}
	if n := len(onB.all()); n != 2 {
		t.Fatalf("destination saw %d arrivals, want 2: %+v", n, onB.all())
	}
}

// TestWatcherRealPostcopy switches a live migration to postcopy, so the
// guest resumes on the destination before all its memory has arrived.
func TestWatcherRealPostcopy(t *testing.T) {
	a := newHost(t, "pcsrc")
	b := newHost(t, "pcdst")
	const name = "g-pc"
	a.lv.DefineAndStart(t, name, libvirttest.DomainXML(name, libvirttest.Interface{Bridge: "br0", MAC: "52:54:00:5a:03:01"}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, onB := startWatcher(t, ctx, b.lv.Socket)

	// An idle 64 MiB guest is mostly zero pages, which precopy sends in
	// well under a second even at 1 MiB/s: on a busy machine it used to
	// finish before the switch ("Enable postcopy with
	// migrate_set_capability before the start of migration" meant the
	// switch came before libvirt had started the job, or after it ended).
	// So the destination QEMU is stopped the moment the source connects
	// to it: the source then cannot complete precopy, its job is seen
	// running (QEMU's migration has started, with postcopy-ram set), the
	// switch is asked for, and only then does the destination run again.
	sock := b.lv.Dir + "/migrate-pc.sock"
	pidfile := b.lv.Dir + "/run/qemu/" + name + ".pid"
	errc := make(chan error, 1)
	go func() {
		_, err := a.lv.VirshErr("migrate", "--live", "--postcopy", "--bandwidth", "1", name, b.lv.URI,
			"--migrateuri", "unix://"+sock)
		errc <- err
	}()
	dst := stopWhenConnected(t, sock, pidfile, a.lv.Dir+"/run/qemu/"+name+".pid", errc)
	info := waitMigrating(t, a, name, errc)
	t.Logf("source job with the destination stopped:\n%s", info)
	// The guest's few hundred KiB of non-zero pages would then cross in
	// milliseconds, often before libvirt resumes the destination, which
	// it then reports as RESUMED/MIGRATED rather than RESUMED/POSTCOPY.
	// At 32 KiB/s (libvirt's --postcopy-bandwidth counts whole MiB/s)
	// the postcopy phase lasts seconds.
	a.lv.Virsh(t, "qemu-monitor-command", name,
		`{"execute":"migrate-set-parameters","arguments":{"max-postcopy-bandwidth":32768}}`)
	if _, err := a.lv.VirshErr("migrate-postcopy", name); err != nil {
		t.Fatalf("switch to postcopy with the migration held running: %v", err)
	}
	if err := dst.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	e := onB.next(t, 60*time.Second)
	var err error
	select {
	case err = <-errc:
	case <-time.After(2 * time.Minute):
		t.Fatalf("postcopy migration still running 2 minutes after the switch (first event %+v)", e)
	}
	t.Logf("completed job:\n%s", a.lv.Virsh(t, "domjobinfo", "--completed", name))
	if e.Domain != name || e.Detail != libvirtev.DetailPostcopy {
		t.Fatalf("event = %+v, want %s postcopy", e, name)
	}
	if err != nil {
		t.Fatalf("postcopy migration: %v", err)
	}
	// libvirt also sends RESUMED/MIGRATED when postcopy completes; it is
	// the same arrival and must not be reported again.
	time.Sleep(time.Second)
	if evs := onB.all(); len(evs) != 1 {
		t.Fatalf("postcopy migration reported %d times: %+v", len(evs), evs)
	}
}

// stopWhenConnected waits for the source QEMU to connect to the
// destination QEMU's migration socket and stops the destination (SIGSTOP)
// at once, so no migration stream can complete until it is continued.
// Waiting for the connection rather than the listening socket matters: the
// source connects only once the destination's libvirtd has finished
// preparing, which it could not do with its QEMU stopped. t's cleanup
// continues it.
func stopWhenConnected(t *testing.T, sock, pidfile, srcPidfile string, errc <-chan error) *os.Process {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	pid, src := 0, 0
	for {
		if pid == 0 {
			pid = readPid(pidfile)
		}
		if src == 0 {
			src = readPid(srcPidfile)
		}
		if pid != 0 && src != 0 && connected(src, sock) {
			p, err := os.FindProcess(pid)
			if err == nil {
				err = p.Signal(syscall.SIGSTOP)
			}
			if err != nil {
				t.Fatalf("stop destination QEMU %d: %v", pid, err)
			}
			t.Cleanup(func() { p.Signal(syscall.SIGCONT) })
			return p
		}
		select {
		case err := <-errc:
			t.Fatalf("migration ended (%v) before the source connected to %s", err, sock)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the source never connected to %s (destination QEMU pid %d)", sock, pid)
		}
		time.Sleep(time.Millisecond)
	}
}

func readPid(pidfile string) int {
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// connected reports whether a connection to the listening unix socket sock
// exists in pid's network namespace: the kernel creates the server side of
// a connection in the client's namespace, bound to the path but without
// the listener's __SO_ACCEPTCON flag.
func connected(pid int, sock string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/net/unix")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 8 && f[7] == sock && f[3] != "00010000" {
			return true
		}
	}
	return false
}

// waitMigrating waits until the source's libvirt reports the outgoing
// migration job as running.
func waitMigrating(t *testing.T, h host, name string, errc <-chan error) string {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		out, _ := h.lv.VirshErr("domjobinfo", name)
		// Its data counters appear once QEMU's migration is active; before
		// that the job is only libvirt's preparation.
		if strings.Contains(out, "Outgoing migration") && strings.Contains(out, "Data processed") {
			return out
		}
		select {
		case err := <-errc:
			t.Fatalf("migration ended (%v) before its job was seen running", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("source job never ran: %s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
