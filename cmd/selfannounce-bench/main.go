//go:build linux

// Command selfannounce-bench measures the daemon as operators run it: the
// real binary in a network namespace, real veths and a real bridge, carrier
// raised by the kernel, frames timestamped by the kernel on the switch side
// of the uplink. It writes its results into docs/performance.md. Needs root.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

type options struct {
	announce   string
	doc        string
	reps       int
	arrivals   int
	idlePorts  int
	idle       time.Duration
	settle     time.Duration
	phases     string
	goBench    bool
	keepLogs   bool
	workDir    string
	cmdline    string
	baselineSh string

	soakArrivals, soakBatch        int
	soakOverrunEvery, soakHUPEvery int
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == probeCmd {
		probeMain(os.Args[2:])
		return
	}
	var o options
	flag.StringVar(&o.announce, "announce", "", "announce binary to measure (default: go build ./cmd/announce into a temporary directory)")
	flag.StringVar(&o.doc, "doc", "docs/performance.md", "markdown file whose generated section is rewritten; empty prints only")
	flag.IntVar(&o.reps, "reps", 200, "carrier-to-first-frame repetitions")
	flag.IntVar(&o.arrivals, "arrivals", 200, "VMs arriving at once")
	flag.IntVar(&o.idlePorts, "idle-ports", 1000, "idle VM ports for the idle-cost run")
	flag.DurationVar(&o.idle, "idle", 60*time.Second, "idle-cost measurement window")
	flag.DurationVar(&o.settle, "settle", 5*time.Second, "wait after the daemon is ready before the idle window")
	flag.StringVar(&o.phases, "phases", "gobench,costs,latency,arrivals,baseline,idle,wedged,soak", "comma-separated phases to run")
	flag.IntVar(&o.soakArrivals, "soak-arrivals", 20000, "soak: arrivals and departures of random MACs")
	flag.IntVar(&o.soakBatch, "soak-batch", 200, "soak: arrivals at a time")
	flag.IntVar(&o.soakOverrunEvery, "soak-overrun-every", 5, "soak: overrun the daemon's netlink socket every N batches (0: never)")
	flag.IntVar(&o.soakHUPEvery, "soak-hup-every", 7, "soak: SIGHUP the daemon every N batches (0: never)")
	flag.BoolVar(&o.keepLogs, "keep-logs", false, "keep the daemon logs and config")
	flag.Parse()
	if flag.NArg() > 0 {
		fatal(fmt.Errorf("unexpected argument %q", flag.Arg(0)))
	}
	if os.Geteuid() != 0 {
		fatal(errors.New("needs root (network namespaces, packet sockets)"))
	}
	if o.reps < 1 || o.arrivals < 1 || o.idlePorts < 1 || o.idle <= 0 || o.soakArrivals < 1 || o.soakBatch < 1 {
		fatal(errors.New("--reps, --arrivals, --idle-ports, --idle, --soak-arrivals and --soak-batch must be positive"))
	}
	if o.soakArrivals > 30000 {
		fatal(errors.New("--soak-arrivals is at most 30000 (Xen domids)"))
	}
	o.cmdline = strings.Join(os.Args, " ")
	o.goBench = strings.Contains(o.phases, "gobench")
	dir, err := os.MkdirTemp("", "selfannounce-bench")
	if err != nil {
		fatal(err)
	}
	o.workDir = dir
	defer func() {
		if !o.keepLogs {
			os.RemoveAll(dir)
		}
	}()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := run(ctx, &o)
	if err != nil {
		fatal(err)
	}
	md := rep.markdown(&o)
	fmt.Println(md)
	if o.doc != "" {
		if err := updateDoc(o.doc, md); err != nil {
			fatal(err)
		}
		fmt.Fprintf(os.Stderr, "wrote %s\n", o.doc)
	}
	if o.keepLogs {
		fmt.Fprintf(os.Stderr, "logs in %s\n", dir)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "selfannounce-bench:", err)
	os.Exit(1)
}

func has(phases, p string) bool { return slices.Contains(strings.Split(phases, ","), p) }

func run(ctx context.Context, o *options) (*report, error) {
	r := &report{started: time.Now()}
	r.machine = machine()
	if has(o.phases, "gobench") {
		for _, pkg := range []string{"./announce/frame", "./announce/burst"} {
			gb, err := goBench(pkg)
			if err != nil {
				return nil, err
			}
			r.goBench = append(r.goBench, gb)
		}
	}
	if has(o.phases, "costs") {
		c, err := costsPhase([]int{1, o.arrivals, o.idlePorts})
		if err != nil {
			return nil, err
		}
		r.costs = c
	}
	needDaemon := has(o.phases, "latency") || has(o.phases, "arrivals") || has(o.phases, "idle") || has(o.phases, "soak") || has(o.phases, "wedged")
	if needDaemon {
		if o.announce == "" {
			p := filepath.Join(o.workDir, "announce")
			cmd := exec.Command("go", "build", "-trimpath", "-o", p, "./cmd/announce")
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				return nil, fmt.Errorf("go build ./cmd/announce: %v\n%s", err, out)
			}
			o.announce = p
		}
		abs, err := filepath.Abs(o.announce)
		if err != nil {
			return nil, err
		}
		o.announce = abs
	}
	if has(o.phases, "latency") || has(o.phases, "arrivals") || has(o.phases, "baseline") {
		n := max(o.arrivals, min(o.reps, 200))
		if err := reactionPhases(ctx, o, n, r); err != nil {
			return nil, err
		}
	}
	if has(o.phases, "idle") {
		res, err := idlePhase(ctx, o)
		if err != nil {
			return nil, err
		}
		r.idle = res
	}
	if has(o.phases, "wedged") {
		res, err := wedgedPhase(ctx, o)
		if err != nil {
			return nil, fmt.Errorf("wedged: %w", err)
		}
		r.wedged = res
	}
	if has(o.phases, "soak") {
		res, err := soakPhase(ctx, o)
		if err != nil {
			return nil, fmt.Errorf("soak: %w", err)
		}
		r.soak = res
	}
	return r, nil
}

// daemon is the announce daemon running inside the host namespace.
type daemon struct {
	cmd     *exec.Cmd
	pid     int
	logPath string
	done    chan error
}

func startDaemon(l *lab, o *options, name string) (*daemon, error) {
	cfg, err := l.writeConfig(o.workDir)
	if err != nil {
		return nil, err
	}
	return launchDaemon(l, o, name, cfg, "--metrics-listen", "off")
}

// launchDaemon runs `announce daemon --config cfg args...` in the host
// namespace and waits until it watches.
func launchDaemon(l *lab, o *options, name, cfg string, args ...string) (*daemon, error) {
	logPath := filepath.Join(o.workDir, name+".log")
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	// `ip netns exec` execs the daemon in place: the pid is the daemon's.
	cmd := l.host.Cmd(o.announce, append([]string{"daemon", "--config", cfg}, args...)...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d := &daemon{cmd: cmd, pid: cmd.Process.Pid, logPath: logPath, done: make(chan error, 1)}
	go func() { d.done <- cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(logPath)
		if bytes.Contains(b, []byte("watching")) {
			return d, nil
		}
		select {
		case err := <-d.done:
			return nil, fmt.Errorf("daemon exited before it was ready (%v): %s", err, bytes.TrimSpace(b))
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.stop()
			return nil, fmt.Errorf("daemon not ready after 30s: %s", bytes.TrimSpace(b))
		}
	}
}

func (d *daemon) stop() {
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(5 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
	}
}

// latencyRun is one series of carrier-to-first-frame measurements.
type latencyRun struct {
	lat     []time.Duration // kernel carrier event -> first frame on the uplink
	fromReq []time.Duration // our RTM_NEWLINK request -> first frame (upper bound)
	missed  int
	// noCarrier counts tries whose vif the kernel never reported with
	// carrier within the wait: no arrival happened, for the daemon or for
	// the bench, so they are neither measured nor missed.
	noCarrier int
	cpuNS     int64
	ticks     int64
	reps      int
	gap       time.Duration
	nlKernel  bool
}

// sequential raises carrier on one vif at a time, waits for its first
// frame, then drops carrier again (which ends its burst, so the next
// arrival meets a quiet daemon).
func sequential(ctx context.Context, l *lab, rec *recorder, reps int, match func(v vif, f wireFrame) bool, pid int) (*latencyRun, error) {
	res := &latencyRun{reps: reps, gap: 10 * time.Millisecond}
	var before procSample
	if pid > 0 {
		before, _ = sampleProc(pid)
	}
	for i := 0; i < reps; i++ {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		v := l.vifs[i%len(l.vifs)]
		rec.reset()
		t0 := time.Now()
		if err := l.set.setUp(v.peerIx, true); err != nil {
			return nil, err
		}
		var ce carrierEvent
		var fr wireFrame
		ok := rec.waitFor(2*time.Second, func(cs []carrierEvent, fs []wireFrame) bool {
			ce = carrierEvent{}
			for _, c := range cs {
				if c.name == v.name {
					ce = c
					break
				}
			}
			if ce.at.IsZero() {
				return false
			}
			for _, f := range fs {
				if match(v, f) {
					fr = f
					return true
				}
			}
			return false
		})
		if !ok {
			if ce.at.IsZero() {
				res.noCarrier++
			} else {
				res.missed++
			}
			if os.Getenv("BENCH_DEBUG") != "" {
				cs, fs := rec.snapshot()
				fmt.Fprintf(os.Stderr, "miss %s: carriers %v\n", v.name, cs)
				for _, f := range fs {
					fmt.Fprintf(os.Stderr, "  frame %s %s %s\n", f.kind, f.src, f.spa)
				}
			}
		} else {
			res.lat = append(res.lat, fr.at.Sub(ce.at))
			if os.Getenv("BENCH_DEBUG") != "" && fr.at.Sub(ce.at) > 2*time.Millisecond {
				fmt.Fprintf(os.Stderr, "slow %s at %s: %v\n", v.name, ce.at.Format("05.000"), fr.at.Sub(ce.at))
			}
			res.fromReq = append(res.fromReq, fr.at.Sub(t0))
		}
		if err := l.set.setUp(v.peerIx, false); err != nil {
			return nil, err
		}
		time.Sleep(res.gap)
	}
	if pid > 0 {
		after, _ := sampleProc(pid)
		res.ticks = after.ticks - before.ticks
		res.cpuNS = after.runNS - before.runNS
	}
	res.nlKernel = rec.nlTS
	if res.missed+res.noCarrier == reps {
		return res, fmt.Errorf("no first frame seen in %d tries", reps)
	}
	return res, nil
}

// arrivalsRun is many VMs arriving at once.
type arrivalsRun struct {
	n          int
	lat        []time.Duration // per vif: its carrier event -> its first frame
	missing    int             // vifs with no frame at all
	incomplete int             // vifs with fewer than the schedule's rounds
	spread     time.Duration   // first to last carrier event
	allDone    time.Duration   // first carrier event -> last frame of the last burst
	frames     int
	ticks      int64
	cpuNS      int64
	ctxsw      int64
	hwmKiB     int64
	threads    int
}

const rounds = 5 // QEMU's default schedule, which the bench config keeps

func arrivals(ctx context.Context, l *lab, rec *recorder, n int, pid int) (*arrivalsRun, error) {
	vifs := l.vifs[:n]
	res := &arrivalsRun{n: n}
	time.Sleep(time.Second) // earlier bursts end and their frames drain
	rec.reset()
	before, err := sampleProc(pid)
	if err != nil {
		return nil, err
	}
	for _, v := range vifs {
		if err := l.set.setUp(v.peerIx, true); err != nil {
			return nil, err
		}
	}
	want := map[string]bool{}
	for _, v := range vifs {
		want[v.mac.String()] = true
	}
	rec.waitFor(15*time.Second, func(_ []carrierEvent, fs []wireFrame) bool {
		if ctx.Err() != nil {
			return true
		}
		count := map[string]int{}
		done := 0
		for _, f := range fs {
			if f.kind == "rarp" {
				k := f.src.String()
				count[k]++
				if count[k] == rounds && want[k] {
					done++
				}
			}
		}
		return done == len(vifs)
	})
	time.Sleep(200 * time.Millisecond) // the last rounds' GARPs
	after, err := sampleProc(pid)
	if err != nil {
		return nil, err
	}
	res.ticks, res.cpuNS, res.ctxsw, res.threads = after.ticks-before.ticks, after.runNS-before.runNS, after.ctxsw-before.ctxsw, after.threads
	if res.hwmKiB, err = peakRSS(pid); err != nil {
		return nil, err
	}
	cs, fs := rec.snapshot()
	carrier := map[string]time.Time{}
	var first, last time.Time
	for _, c := range cs {
		if _, ok := carrier[c.name]; !ok {
			carrier[c.name] = c.at
		}
		if first.IsZero() || c.at.Before(first) {
			first = c.at
		}
		if c.at.After(last) {
			last = c.at
		}
	}
	res.spread = last.Sub(first)
	firstFrame := map[string]time.Time{}
	rarps := map[string]int{}
	var lastFrame time.Time
	for _, f := range fs {
		k := f.src.String()
		if !want[k] {
			continue
		}
		res.frames++
		if _, ok := firstFrame[k]; !ok {
			firstFrame[k] = f.at
		}
		if f.kind == "rarp" {
			rarps[k]++
		}
		if f.at.After(lastFrame) {
			lastFrame = f.at
		}
	}
	for _, v := range vifs {
		k := v.mac.String()
		ff, ok := firstFrame[k]
		ct, cok := carrier[v.name]
		if !ok || !cok {
			res.missing++
			continue
		}
		res.lat = append(res.lat, ff.Sub(ct))
		if rarps[k] < rounds {
			res.incomplete++
		}
	}
	res.allDone = lastFrame.Sub(first)
	for _, v := range vifs {
		l.set.setUp(v.peerIx, false)
	}
	return res, nil
}

// reactionPhases runs the latency, arrivals and baseline phases on one lab.
func reactionPhases(ctx context.Context, o *options, n int, r *report) error {
	l, err := newLab(n, nil)
	if err != nil {
		return err
	}
	defer l.close()
	rec := newRecorder()
	defer rec.close()
	if err := rec.watchCarrier(l.host); err != nil {
		return err
	}
	if err := rec.capture(l.sw, "sw0"); err != nil {
		return err
	}
	rarpFrom := func(v vif, f wireFrame) bool { return f.kind == "rarp" && bytes.Equal(f.src, v.mac) }
	if has(o.phases, "latency") || has(o.phases, "arrivals") {
		d, err := startDaemon(l, o, "reaction")
		if err != nil {
			return err
		}
		if has(o.phases, "latency") {
			// A warm-up arrival, not counted: the first pays for page
			// faults and lazily opened sockets.
			if _, err := sequential(ctx, l, rec, 1, rarpFrom, 0); err != nil {
				d.stop()
				return fmt.Errorf("warm-up: %w (daemon log %s)", err, d.logPath)
			}
			if r.latency, err = sequential(ctx, l, rec, o.reps, rarpFrom, d.pid); err != nil {
				d.stop()
				return fmt.Errorf("latency: %w (daemon log %s)", err, d.logPath)
			}
		}
		if has(o.phases, "arrivals") {
			if r.arrivals, err = arrivals(ctx, l, rec, o.arrivals, d.pid); err != nil {
				d.stop()
				return err
			}
		}
		d.stop()
	}
	if has(o.phases, "baseline") {
		if _, err := exec.LookPath("arping"); err != nil {
			return errors.New("baseline needs arping (Debian: apt-get install iputils-arping)")
		}
		stop, err := startBaseline(l, o)
		if err != nil {
			return err
		}
		garpFrom := func(v vif, f wireFrame) bool { return f.kind == "arp" && f.spa == v.ip && bytes.Equal(f.src, l.upMAC) }
		if _, err := sequential(ctx, l, rec, 1, garpFrom, 0); err != nil {
			stop()
			return fmt.Errorf("baseline warm-up: %w", err)
		}
		r.baseline, err = sequential(ctx, l, rec, o.reps, garpFrom, 0)
		stop()
		if err != nil {
			return fmt.Errorf("baseline: %w", err)
		}
		r.baselineScript = o.baselineSh
	}
	return nil
}

// baselineScript is the common hand-made alternative: watch link events,
// fork arping for every port that comes up.
const baselineScript = `ip monitor link | while read -r line; do
  case "$line" in
    *": vif"*"state UP"*)
      name=${line#*: }; name=${name%%[@:]*}; n=${name#vif}; n=$((${n%%.*} - 1))
      arping -U -c 1 -I up0 -s 10.1.$((n / 250)).$((n % 250 + 1)) 10.1.$((n / 250)).$((n % 250 + 1)) >/dev/null 2>&1 &
      ;;
  esac
done`

func startBaseline(l *lab, o *options) (func(), error) {
	o.baselineSh = baselineScript
	// arping binds its socket to the -s address, which a host does not own
	// for its guests: such scripts need non-local binds.
	if _, err := l.host.Run("sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1"); err != nil {
		return nil, err
	}
	cmd := l.host.Cmd("sh", "-c", baselineScript)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	lf, err := os.Create(filepath.Join(o.workDir, "baseline.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, err
	}
	// ip monitor needs a moment to subscribe.
	time.Sleep(300 * time.Millisecond)
	return func() {
		// The script and its ip monitor and arpings share our process group.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		cmd.Wait()
		lf.Close()
	}, nil
}

// idleRun is the cost of watching many ports while nothing happens.
type idleRun struct {
	ports, carrier int
	window         time.Duration
	ticks          int64
	cpuNS          int64
	ctxsw          int64
	threads        int
	hwmKiB         int64
	startup        time.Duration
}

func idlePhase(ctx context.Context, o *options) (*idleRun, error) {
	withCarrier := func(i int) bool { return i%2 == 0 }
	l, err := newLab(o.idlePorts, withCarrier)
	if err != nil {
		return nil, err
	}
	defer l.close()
	res := &idleRun{ports: o.idlePorts, carrier: (o.idlePorts + 1) / 2, window: o.idle}
	t0 := time.Now()
	d, err := startDaemon(l, o, "idle")
	if err != nil {
		return nil, err
	}
	defer d.stop()
	res.startup = time.Since(t0)
	select {
	case <-time.After(o.settle):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	before, err := sampleProc(d.pid)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "idle: watching %d ports for %v\n", o.idlePorts, o.idle)
	select {
	case <-time.After(o.idle):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	after, err := sampleProc(d.pid)
	if err != nil {
		return nil, err
	}
	res.ticks, res.cpuNS, res.ctxsw, res.threads = after.ticks-before.ticks, after.runNS-before.runNS, after.ctxsw-before.ctxsw, after.threads
	if res.hwmKiB, err = peakRSS(d.pid); err != nil {
		return nil, err
	}
	return res, nil
}

func machine() string {
	var u unix.Utsname
	kernel := "?"
	if unix.Uname(&u) == nil {
		kernel = unix.ByteSliceToString(u.Release[:])
	}
	cpu := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	return fmt.Sprintf("Linux %s, nproc %d, %s, %s", kernel, runtime.NumCPU(), cpu, runtime.Version())
}
