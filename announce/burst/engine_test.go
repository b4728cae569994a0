package burst

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/config"
	"github.com/selfannounce/selfannounce/announce/frame"
	"github.com/selfannounce/selfannounce/announce/schedule"
)

// The engine's decisions are checked on a fake clock: the tests drive step
// themselves and advance time by exactly what step asks to sleep, so every
// assertion is about order and counts on the simulated wire, never about
// how long the machine took.

type sent struct {
	at   time.Duration // since the simulation began
	key  string
	kind string
	data string
	via  string
}

type sim struct {
	t     *testing.T
	t0    time.Time
	clock time.Time
	e     *Engine
	wire  []sent
	fail  map[string]error // via -> error every write on it returns
	done  map[string][]Result
	steps int
}

func newSim(t *testing.T, rate int) *sim {
	s := &sim{t: t, t0: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), fail: map[string]error{}, done: map[string][]Result{}}
	s.clock = s.t0
	s.e = newEngine(rate, nil, func() time.Time { return s.clock })
	return s
}

func (s *sim) elapsed() time.Duration { return s.clock.Sub(s.t0) }

type simWriter struct {
	s        *sim
	key, via string
}

func (w simWriter) WriteFrame(b []byte) error {
	if err := w.s.fail[w.via]; err != nil {
		return err
	}
	// The round's Data is "kind:..." so the wire shows what was sent.
	kind, _, _ := strings.Cut(string(b), ":")
	w.s.wire = append(w.s.wire, sent{at: w.s.elapsed(), key: w.key, kind: kind, data: string(b), via: w.via})
	return nil
}

// burst builds a burst for key whose round is n frames on one writer.
func (s *sim) burst(key string, n int, sc schedule.Schedule) *Burst {
	b := &Burst{Key: key, Schedule: sc}
	for i := range n {
		b.Packets = append(b.Packets, Packet{W: simWriter{s, key, "eth0"}, Kind: "rarp", Data: []byte(fmt.Sprintf("rarp:%s:%d", key, i))})
	}
	b.Done = func(r Result) { s.done[key] = append(s.done[key], r) }
	return b
}

func (s *sim) start(b *Burst) {
	s.t.Helper()
	if err := s.e.Start(b); err != nil {
		s.t.Fatalf("Start(%s): %v", b.Key, err)
	}
}

// runFor steps the engine for d of simulated time, sleeping exactly as long
// as it asks.
func (s *sim) runFor(d time.Duration) {
	s.t.Helper()
	end := s.clock.Add(d)
	for {
		s.steps++
		if s.steps > 1_000_000 {
			s.t.Fatal("engine spins: a million steps")
		}
		wait, done := s.e.step()
		if done {
			s.t.Fatal("engine stopped without Close")
		}
		if wait < 0 {
			s.clock = end
			return
		}
		if wait == 0 {
			s.t.Fatal("step asked for a zero sleep: the loop would spin")
		}
		if s.clock.Add(wait).After(end) {
			s.clock = end
			return
		}
		s.clock = s.clock.Add(wait)
	}
}

// idle reports whether the engine would sleep with no timer.
func (s *sim) idle() bool {
	wait, _ := s.e.step()
	return wait < 0
}

func (s *sim) framesOf(key string) []sent {
	var out []sent
	for _, f := range s.wire {
		if f.key == key {
			out = append(out, f)
		}
	}
	return out
}

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func TestBurstFollowsQEMUSchedule(t *testing.T) {
	s := newSim(t, 1_000_000)
	s.start(s.burst("a", 2, schedule.Default()))
	s.runFor(5 * time.Second)

	got := s.framesOf("a")
	if len(got) != 10 {
		t.Fatalf("sent %d frames, want 5 rounds of 2", len(got))
	}
	want := []time.Duration{0, ms(50), ms(200), ms(450), ms(800)}
	for i, f := range got {
		if f.at != want[i/2] {
			t.Errorf("frame %d at %v, want round %d at %v", i, f.at, i/2+1, want[i/2])
		}
		if wantData := fmt.Sprintf("rarp:a:%d", i%2); f.data != wantData {
			t.Errorf("frame %d is %q, want %q (a round is sent in order)", i, f.data, wantData)
		}
	}
	res := s.done["a"]
	if len(res) != 1 {
		t.Fatalf("Done called %d times, want once", len(res))
	}
	r := res[0]
	if r.Rounds != 5 || r.Frames != 10 || r.Failed != 0 || r.Cancelled || r.Replaced {
		t.Errorf("result %+v, want 5 rounds, 10 frames, completed", r)
	}
	if r.FirstFrame.Sub(s.t0) != 0 || r.LastFrame.Sub(s.t0) != ms(800) || r.Queued != s.t0 {
		t.Errorf("result times queued %v first %v last %v", r.Queued.Sub(s.t0), r.FirstFrame.Sub(s.t0), r.LastFrame.Sub(s.t0))
	}
	if !s.idle() {
		t.Error("engine keeps a timer with nothing to do")
	}
	if s.e.Active("a") {
		t.Error("finished burst still active")
	}
}

func TestIdleBetweenRoundsSleepsUntilDue(t *testing.T) {
	s := newSim(t, 1_000_000)
	if !s.idle() {
		t.Fatal("new engine is not idle")
	}
	s.start(s.burst("a", 1, schedule.Default()))
	wait, _ := s.e.step()
	if wait != ms(50) {
		t.Errorf("after the first round step sleeps %v, want until round 2 at 50ms", wait)
	}
	if len(s.wire) != 1 {
		t.Errorf("first round sent %d frames, want 1", len(s.wire))
	}
}

func TestNewArrivalFirstRoundBeforeLaterRounds(t *testing.T) {
	s := newSim(t, 1_000_000)
	for _, k := range []string{"a", "b", "c"} {
		s.start(s.burst(k, 3, schedule.Default()))
	}
	s.runFor(ms(50) - 1)
	// Rounds 2 of a, b and c are due now; d arrives at the same moment.
	s.clock = s.t0.Add(ms(50))
	s.start(s.burst("d", 3, schedule.Default()))
	n := len(s.wire)
	s.runFor(0)
	after := s.wire[n:]
	if len(after) != 12 {
		t.Fatalf("at 50ms %d frames went out, want d's round 1 and rounds 2 of a, b, c", len(after))
	}
	for i := range 3 {
		if after[i].key != "d" {
			t.Fatalf("frame %d at 50ms is %s's, want d's first round first: %v", i, after[i].key, after)
		}
	}
}

func TestFirstRoundsJumpRateLimitedLaterRounds(t *testing.T) {
	// 100 frames/s with a bucket of 10: a's later rounds queue behind the
	// cap, and b's first round still goes before them.
	s := newSim(t, 100)
	s.start(s.burst("a", 30, schedule.Default()))
	s.runFor(ms(5))
	if n := len(s.framesOf("a")); n != 10 {
		t.Fatalf("a sent %d frames from a full bucket of 10", n)
	}
	s.start(s.burst("b", 2, schedule.Default()))
	s.runFor(time.Second)
	var order []string
	for _, f := range s.wire[10:] {
		order = append(order, f.key)
	}
	aFirstRoundLeft := 20
	for i := range aFirstRoundLeft {
		if order[i] != "a" {
			// b does not cut into a's first round: first rounds are FIFO.
			t.Fatalf("frame %d is %s's, want a's first round to finish first", i+10, order[i])
		}
	}
	if order[20] != "b" || order[21] != "b" {
		t.Fatalf("after a's first round want b's first round, got %v", order[20:22])
	}
	checkRateCap(t, s.wire, 100, 10)
}

func TestFirstRoundCutsInMidLaterRound(t *testing.T) {
	s := newSim(t, 100) // bucket of 10
	s.start(s.burst("a", 8, schedule.Default()))
	s.runFor(ms(49))
	// Round 2 is due at 50ms with 2 tokens refilled by then (+ leftovers):
	// it starts, runs out of tokens mid-round, and b arrives.
	s.runFor(ms(1))
	partial := len(s.framesOf("a")) - 8
	if partial <= 0 || partial >= 8 {
		t.Fatalf("a's round 2 has %d of 8 frames out at 50ms, want it cut by the rate cap", partial)
	}
	s.start(s.burst("b", 1, schedule.Default()))
	n := len(s.wire)
	s.runFor(ms(10))
	if len(s.wire) == n || s.wire[n].key != "b" {
		t.Fatalf("the next frame after b arrived is not b's first round: %v", s.wire[n:])
	}
	s.runFor(5 * time.Second)
	if got := len(s.framesOf("a")); got != 40 {
		t.Errorf("a sent %d frames, want 5 whole rounds of 8", got)
	}
	if r := s.done["a"]; len(r) != 1 || r[0].Rounds != 5 {
		t.Errorf("a's result %+v, want one, 5 rounds", r)
	}
	checkRateCap(t, s.wire, 100, 10)
}

// checkRateCap checks the token bucket on the wire: in any window, at most
// the bucket plus what the rate refills in the window.
func checkRateCap(t *testing.T, wire []sent, rate, bucket float64) {
	t.Helper()
	for i := range wire {
		for j := i; j < len(wire); j++ {
			n := float64(j - i + 1)
			allowed := bucket + (wire[j].at-wire[i].at).Seconds()*rate + 1e-6
			if n > allowed {
				t.Fatalf("%v frames between %v and %v: rate cap %v/s with bucket %v exceeded", n, wire[i].at, wire[j].at, rate, bucket)
			}
		}
	}
}

func TestCancelMidFirstRound(t *testing.T) {
	s := newSim(t, 10) // bucket of 1: one frame, then 100ms per token
	s.start(s.burst("a", 3, schedule.Default()))
	s.start(s.burst("b", 2, schedule.Default()))
	s.runFor(ms(150))
	if n := len(s.framesOf("a")); n != 2 {
		t.Fatalf("a sent %d frames by 150ms, want 2", n)
	}
	if !s.e.Cancel("a") {
		t.Fatal("Cancel(a) found no burst")
	}
	if s.e.Cancel("a") {
		t.Fatal("second Cancel(a) found a burst")
	}
	s.runFor(5 * time.Second)
	if n := len(s.framesOf("a")); n != 2 {
		t.Errorf("a sent %d frames, want none after Cancel", n)
	}
	if n := len(s.framesOf("b")); n != 10 {
		t.Errorf("b sent %d frames, want all 5 rounds of 2", n)
	}
	if got := s.wire[2].key; got != "b" {
		t.Errorf("frame after the cancel is %s's, want b's first round", got)
	}
	ra := s.done["a"]
	if len(ra) != 1 || !ra[0].Cancelled || ra[0].Frames != 2 || ra[0].Rounds != 0 {
		t.Errorf("a's results %+v, want one cancelled after 2 frames", ra)
	}
	if rb := s.done["b"]; len(rb) != 1 || rb[0].Cancelled || rb[0].Rounds != 5 {
		t.Errorf("b's results %+v, want one completed", rb)
	}
}

func TestCancelMidLaterRoundAndBetweenRounds(t *testing.T) {
	s := newSim(t, 40) // bucket of 4
	s.start(s.burst("a", 4, schedule.Default()))
	s.start(s.burst("b", 4, schedule.Default()))
	s.start(s.burst("c", 1, schedule.Default()))
	s.runFor(time.Millisecond)
	if len(s.wire) != 4 {
		t.Fatalf("%d frames from a bucket of 4", len(s.wire))
	}
	s.runFor(ms(300))
	// c is between rounds; a is in its later rounds.
	aBefore := len(s.framesOf("a"))
	s.e.Cancel("c")
	s.e.Cancel("a")
	cBefore := len(s.framesOf("c"))
	s.runFor(5 * time.Second)
	if len(s.framesOf("a")) != aBefore || len(s.framesOf("c")) != cBefore {
		t.Error("frames of a cancelled burst went out")
	}
	if n := len(s.framesOf("b")); n != 20 {
		t.Errorf("b sent %d frames, want 20", n)
	}
	if len(s.e.later) != 0 || len(s.e.bursts) != 0 {
		t.Errorf("engine holds %d later rounds and %d bursts after everything ended", len(s.e.later), len(s.e.bursts))
	}
	if !s.idle() {
		t.Error("engine not idle")
	}
}

func TestReplaceByKey(t *testing.T) {
	s := newSim(t, 1_000_000)
	old := s.burst("a", 1, schedule.Default())
	s.start(old)
	s.runFor(ms(100)) // rounds 1 and 2 of the old burst
	nb := &Burst{Key: "a", Schedule: schedule.Default(),
		Packets: []Packet{{W: simWriter{s, "a", "eth0"}, Kind: "rarp", Data: []byte("rarp:new")}}}
	var newRes []Result
	nb.Done = func(r Result) { newRes = append(newRes, r) }
	s.start(nb)
	s.runFor(5 * time.Second)

	var olds, news int
	for _, f := range s.wire {
		switch f.data {
		case "rarp:new":
			news++
			if f.at < ms(100) {
				t.Errorf("new burst's frame at %v, before it started", f.at)
			}
		default:
			olds++
			if f.at > ms(100) {
				t.Errorf("replaced burst sent a frame at %v", f.at)
			}
		}
	}
	if olds != 2 || news != 5 {
		t.Errorf("old burst sent %d frames (want 2), new %d (want 5)", olds, news)
	}
	r := s.done["a"]
	if len(r) != 1 || !r[0].Replaced || !r[0].Cancelled || r[0].Rounds != 2 {
		t.Errorf("old result %+v, want replaced after 2 rounds", r)
	}
	if len(newRes) != 1 || newRes[0].Cancelled || newRes[0].Rounds != 5 {
		t.Errorf("new result %+v, want completed", newRes)
	}
}

func TestZeroPacketBurstEndsOnceInline(t *testing.T) {
	s := newSim(t, 1_000_000)
	b := s.burst("empty", 0, schedule.Default())
	s.start(b)
	s.runFor(0)
	// Done must have run by the time step returns: reported from the
	// engine's own goroutine, not a stray one racing Close and Wait.
	r := s.done["empty"]
	if len(r) != 1 || r[0].Cancelled || r[0].Frames != 0 {
		t.Fatalf("results %+v, want one completed with no frames", r)
	}
	s.runFor(5 * time.Second)
	if len(s.done["empty"]) != 1 || s.e.Active("empty") || !s.idle() {
		t.Error("empty burst lingers or ends twice")
	}
}

func TestWriteErrorsCountedAndBurstGoesOn(t *testing.T) {
	s := newSim(t, 1_000_000)
	obs := &countObs{}
	s.e.obs = obs
	bad := errors.New("no such device")
	s.fail["eth1"] = bad
	b := s.burst("a", 1, schedule.Default())
	b.Packets = append(b.Packets, Packet{W: simWriter{s, "a", "eth1"}, Kind: "garp", Data: []byte("garp:a")})
	s.start(b)
	s.runFor(5 * time.Second)
	r := s.done["a"]
	if len(r) != 1 || r[0].Frames != 5 || r[0].Failed != 5 || !errors.Is(r[0].Err, bad) || r[0].Rounds != 5 {
		t.Fatalf("result %+v, want 5 good, 5 failed, 5 rounds", r)
	}
	if obs.ok["rarp"] != 5 || obs.failed != 5 {
		t.Errorf("observer saw %v ok, %d failed", obs.ok, obs.failed)
	}
}

type countObs struct {
	mu     sync.Mutex
	ok     map[string]int
	failed int
}

func (o *countObs) FrameWritten(kind string, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err != nil {
		o.failed++
		return
	}
	if o.ok == nil {
		o.ok = map[string]int{}
	}
	o.ok[kind]++
}

func TestStartRejectsBadSchedule(t *testing.T) {
	s := newSim(t, 100)
	err := s.e.Start(&Burst{Key: "a", Schedule: schedule.Schedule{Rounds: 0, Initial: ms(50), Max: ms(50)}})
	if err == nil || s.e.Active("a") {
		t.Fatal("burst with zero rounds accepted")
	}
}

func TestSetRate(t *testing.T) {
	s := newSim(t, 10)
	s.e.SetRate(1000) // bucket of 100
	s.e.tokens = s.e.cap
	s.start(s.burst("a", 100, schedule.Schedule{Initial: ms(50), Max: ms(50), Rounds: 1}))
	s.runFor(0)
	if len(s.wire) != 100 {
		t.Errorf("after SetRate(1000) %d frames left at once, want the bucket of 100", len(s.wire))
	}
	s.e.SetRate(0)
	if s.e.rate != 1 {
		t.Errorf("SetRate(0) left rate %v, want the floor of 1", s.e.rate)
	}
}

// TestDefaultRateServes200Arrivals checks config.DefaultRate's promise: 200
// VMs arriving at once, each with an IPv4 and an IPv6 address behind two
// uplinks (RARP, GARP and NA per uplink: 6 frames a first round, 1200 in
// all), each get their first frame out within 250 ms, even when the bucket
// was empty when they arrived; and no later round goes before the last of
// those first rounds.
func TestDefaultRateServes200Arrivals(t *testing.T) {
	for _, bucket := range []string{"full", "empty"} {
		t.Run(bucket, func(t *testing.T) {
			s := newSim(t, config.DefaultRate)
			if bucket == "empty" {
				s.e.tokens = 0
			}
			uplinks := []string{"eth0", "eth1"}
			for i := range 200 {
				g := announce.Guest{
					MAC: []byte{0x52, 0x54, 0, 0, byte(i >> 8), byte(i)},
					IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", i+1))},
				}
				fs, err := frame.Round(g, 0)
				if err != nil {
					t.Fatal(err)
				}
				key := g.MAC.String()
				b := &Burst{Key: key, Schedule: schedule.Default()}
				for _, f := range fs {
					for _, u := range uplinks {
						b.Packets = append(b.Packets, Packet{W: simWriter{s, key, u}, Kind: f.Kind.String(),
							Data: append([]byte(f.Kind.String()+":"), f.Data...)})
					}
				}
				if len(b.Packets) != 6 {
					t.Fatalf("first round has %d frames, want 6", len(b.Packets))
				}
				b.Done = func(r Result) { s.done[key] = append(s.done[key], r) }
				s.start(b)
			}
			s.runFor(5 * time.Second)

			if len(s.wire) != 200*6*5 {
				t.Fatalf("%d frames sent, want 6000", len(s.wire))
			}
			first := map[string]time.Duration{}
			seen := map[string]int{}
			lastFirstRound := -1
			firstLater := -1
			for i, f := range s.wire {
				if _, ok := first[f.key]; !ok {
					first[f.key] = f.at
				}
				seen[f.key]++
				if seen[f.key] <= 6 {
					lastFirstRound = i
				} else if firstLater < 0 {
					firstLater = i
				}
			}
			if at := s.wire[lastFirstRound].at; at > ms(250) {
				t.Errorf("the last first round ended %v after the arrivals, want within 250ms", at)
			}
			if firstLater < lastFirstRound {
				t.Errorf("a later round (frame %d) went before the last first round frame (%d)", firstLater, lastFirstRound)
			}
			var worst time.Duration
			for k, at := range first {
				if at > worst {
					worst = at
				}
				if r := s.done[k]; len(r) != 1 || r[0].FirstFrame.Sub(r[0].Queued) != at {
					t.Errorf("%s: result %+v disagrees with the wire", k, r)
				}
			}
			if len(first) != 200 {
				t.Fatalf("%d guests announced, want 200", len(first))
			}
			if worst > ms(250) {
				t.Errorf("the last guest's first frame left %v after arrival, want within 250ms", worst)
			}
			t.Logf("bucket %s: last first frame after %v", bucket, worst)
			checkRateCap(t, s.wire, float64(config.DefaultRate), float64(config.DefaultRate)/10)
		})
	}
}

// The real engine, on the real clock: only order and counts are asserted.

type chanWriter struct {
	mu     sync.Mutex
	frames []string
	ch     chan string
}

func (w *chanWriter) WriteFrame(b []byte) error {
	w.mu.Lock()
	w.frames = append(w.frames, string(b))
	w.mu.Unlock()
	select {
	case w.ch <- string(b):
	default:
	}
	return nil
}

func (w *chanWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.frames)
}

// slow is a schedule whose second round is far enough away that a test
// always acts between rounds.
var slow = schedule.Schedule{Initial: time.Hour / 60, Step: 0, Max: time.Hour / 60, Rounds: 3}

func TestCloseEndsBurstsInFlight(t *testing.T) {
	e := New(1000, nil)
	w := &chanWriter{ch: make(chan string, 10)}
	results := make(chan Result, 10)
	for _, k := range []string{"a", "b"} {
		if err := e.Start(&Burst{Key: k, Schedule: slow, Packets: []Packet{{W: w, Kind: "rarp", Data: []byte(k)}},
			Done: func(r Result) { results <- r }}); err != nil {
			t.Fatal(err)
		}
	}
	<-w.ch
	<-w.ch
	e.Close()
	for range 2 {
		r := <-results
		if !r.Cancelled || r.Rounds != 1 {
			t.Errorf("%s: %+v, want cancelled after its first round", r.Key, r)
		}
	}
	select {
	case r := <-results:
		t.Errorf("Done called again: %+v", r)
	default:
	}
	if err := e.Start(&Burst{Key: "c", Schedule: slow}); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close: %v, want ErrClosed", err)
	}
	e.Close() // a second Close returns
	if n := w.count(); n != 2 {
		t.Errorf("%d frames written, want 2", n)
	}
	if err := e.Wait(context.Background()); err != nil {
		t.Errorf("Wait after Close: %v", err)
	}
}

func TestRealEngineCompletesAndWaits(t *testing.T) {
	e := New(1_000_000, nil)
	defer e.Close()
	w := &chanWriter{ch: make(chan string, 100)}
	fast := schedule.Schedule{Initial: time.Millisecond, Step: time.Millisecond, Max: 3 * time.Millisecond, Rounds: 4}
	done := make(chan Result, 1)
	if err := e.Start(&Burst{Key: "a", Schedule: fast, Packets: []Packet{{W: w, Data: []byte("1")}, {W: w, Data: []byte("2")}},
		Done: func(r Result) { done <- r }}); err != nil {
		t.Fatal(err)
	}
	if err := e.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.Rounds != 4 || r.Frames != 8 || r.Cancelled {
		t.Errorf("result %+v", r)
	}
	if got := strings.Join(w.frames, ""); got != "12121212" {
		t.Errorf("wire %q, want 4 rounds of 1,2", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.Start(&Burst{Key: "b", Schedule: slow, Packets: []Packet{{W: w, Data: []byte("x")}}}); err != nil {
		t.Fatal(err)
	}
	if err := e.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait with a running burst and a cancelled context: %v", err)
	}
	if !e.Cancel("b") || e.Active("b") {
		t.Error("Cancel(b)")
	}
}

// TestConcurrentUse hammers Start, Cancel and Close from many goroutines:
// every burst must end exactly once (run with -race).
func TestConcurrentUse(t *testing.T) {
	e := New(100_000, &countObs{})
	w := &chanWriter{ch: make(chan string)}
	var mu sync.Mutex
	ends := map[*Burst]int{}
	started := map[*Burst]bool{}
	fast := schedule.Schedule{Initial: time.Millisecond, Step: time.Millisecond, Max: 2 * time.Millisecond, Rounds: 3}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				key := fmt.Sprintf("k%d", (g*7+i)%13)
				b := &Burst{Key: key, Schedule: fast, Packets: []Packet{{W: w, Data: []byte(key)}}}
				b.Done = func(Result) {
					mu.Lock()
					ends[b]++
					mu.Unlock()
				}
				if i%5 == 4 {
					b.Packets = nil
				}
				if e.Start(b) == nil {
					mu.Lock()
					started[b] = true
					mu.Unlock()
				}
				if i%3 == 0 {
					e.Cancel(key)
				}
			}
		})
	}
	wg.Wait()
	e.Close()
	mu.Lock()
	defer mu.Unlock()
	for b := range started {
		if ends[b] != 1 {
			t.Fatalf("burst %s ended %d times, want once", b.Key, ends[b])
		}
	}
}

// TestRateWaitNeverZero: at rates that do not divide a second evenly, the
// sleep for the next token must not truncate to a wake-up that finds
// 0.999999 tokens and sleeps zero.
func TestRateWaitNeverZero(t *testing.T) {
	for _, rate := range []int{3, 7, 9999, 30011} {
		s := newSim(t, rate)
		s.e.tokens = 0
		s.start(s.burst("a", 50, schedule.Schedule{Initial: ms(50), Max: ms(50), Rounds: 1}))
		s.runFor(time.Minute) // fails on a zero sleep
		if len(s.wire) != 50 {
			t.Errorf("rate %d: %d frames, want 50", rate, len(s.wire))
		}
	}
}

func TestReplaceAndCancelInsideTheFirstRoundQueue(t *testing.T) {
	s := newSim(t, 10) // one frame per 100ms after a bucket of 1
	s.start(s.burst("a", 3, schedule.Default()))
	s.start(s.burst("b", 2, schedule.Default()))
	s.start(s.burst("c", 2, schedule.Default()))
	s.runFor(ms(150)) // a:0 and a:1 out
	// a is replaced mid-round: its fresh first round goes to the back of
	// the queue; b, queued in the middle, is cancelled.
	s.start(s.burst("a", 3, schedule.Default()))
	s.e.Cancel("b")
	s.runFor(ms(750))
	var got []string
	for _, f := range s.wire[:7] {
		got = append(got, f.data)
	}
	// c's second round was due at 400ms but waits for a's first round.
	want := "rarp:a:0 rarp:a:1 rarp:c:0 rarp:c:1 rarp:a:0 rarp:a:1 rarp:a:2"
	if strings.Join(got, " ") != want {
		t.Errorf("wire %v, want %s", got, want)
	}
	if r := s.done["a"]; len(r) != 1 || !r[0].Replaced || r[0].Frames != 2 {
		t.Errorf("replaced a: %+v", r)
	}
	if r := s.done["b"]; len(r) != 1 || !r[0].Cancelled || r[0].Frames != 0 || !r[0].FirstFrame.IsZero() {
		t.Errorf("cancelled b: %+v", r)
	}
}

// Wait must not return while a finished burst's Done is still running: the
// one-shot and tests read results once Wait returns.
func TestWaitCoversDone(t *testing.T) {
	e := New(1_000_000, nil)
	defer e.Close()
	w := &chanWriter{ch: make(chan string, 1)}
	entered, release := make(chan struct{}), make(chan struct{})
	one := schedule.Schedule{Initial: time.Millisecond, Max: time.Millisecond, Rounds: 1}
	if err := e.Start(&Burst{Key: "a", Schedule: one, Packets: []Packet{{W: w, Data: []byte("x")}},
		Done: func(Result) { close(entered); <-release }}); err != nil {
		t.Fatal(err)
	}
	<-entered
	if e.Active("a") {
		t.Error("a finished burst is still active")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.Wait(ctx); err == nil {
		t.Error("Wait returned while Done was still running")
	}
	close(release)
	if err := e.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
}
