// Package burst runs announcement bursts on QEMU's schedule under one global
// frame-rate cap. One goroutine owns every burst: when 200 VMs arrive at once
// their first rounds go out before anyone's later rounds, and when nothing is
// running no timer is armed at all.
package burst

import (
	"container/heap"
	"context"
	"errors"
	"math"
	"sync"
	"time"

	"github.com/selfannounce/selfannounce/announce/schedule"
)

// Writer puts one frame on the wire through a fixed path (a packet socket on
// an uplink, or an OpenFlow packet-out from the VIF's port).
type Writer interface {
	WriteFrame(b []byte) error
}

// Pender is implemented by a Writer that may not be able to write yet,
// such as an OpenFlow session still being dialled. Pending returns nil
// when the writer is ready, else a channel closed once it may be. The
// engine then holds that burst's first round back, for at most ReadyWait,
// without holding back any other burst; it never waits on a writer.
type Pender interface {
	Pending() <-chan struct{}
}

// ReadyWait bounds how long a burst waits for its writers (Pender) before
// its first round goes out regardless, its writes then failing fast.
const ReadyWait = 500 * time.Millisecond

// Packet is one frame of a round and where it goes.
type Packet struct {
	W    Writer
	Kind string // "rarp", "garp", "na": for metrics and logs
	Data []byte
}

// Burst is an announcement to repeat on a schedule.
type Burst struct {
	// Key identifies the guest (its MAC): starting a burst for a key that
	// already has one replaces it, so one arrival never runs twice.
	Key      string
	Packets  []Packet // one round, sent in order
	Schedule schedule.Schedule
	// Done, if set, is called once when the burst ends for any reason:
	// from the engine's goroutine when it completes, from Start, Cancel or
	// Close when they end it, never with the engine's lock held. It must
	// not block.
	Done func(Result)
}

// Result says how a burst ended.
type Result struct {
	Key        string
	Queued     time.Time // when Start was called
	FirstFrame time.Time // when the first frame was written (zero if none)
	LastFrame  time.Time
	Rounds     int   // rounds fully sent
	Frames     int   // frames written without error
	Failed     int   // frames whose write failed
	Err        error // the last write error, if any
	Cancelled  bool
	Replaced   bool // cancelled because a new burst for the same key started
}

// Observer sees every frame the engine writes; the daemon counts them.
type Observer interface {
	FrameWritten(kind string, err error)
}

// Engine schedules bursts. Create with New and stop with Close.
type Engine struct {
	mu     sync.Mutex
	wake   chan struct{}
	bursts map[string]*running
	first  []*running // due first rounds, FIFO: they jump every queue
	later  laterHeap  // later rounds by due time
	tokens float64
	last   time.Time
	rate   float64
	cap    float64
	obs    Observer
	closed bool
	quit   chan struct{} // closed by Close: ends holds for pending writers
	// readyWait is ReadyWait; tests lengthen it.
	readyWait time.Duration
	stopped   chan struct{}
	now       func() time.Time

	// finishing counts bursts ended whose Done has not returned yet.
	finishing int
}

type running struct {
	b      *Burst
	res    Result
	round  int // next round to send
	next   int // next packet within the round
	due    time.Time
	idx    int // heap index, -1 when not in the later heap
	inHeap bool
	dead   bool
}

// New starts an engine that writes at most rate frames per second, with a
// bucket of rate/10 frames (at least 1) so a burst of arrivals is not
// smoothed out needlessly.
func New(rate int, obs Observer) *Engine {
	e := newEngine(rate, obs, time.Now)
	go e.loop()
	return e
}

// newEngine builds an engine without its goroutine, so tests can drive step
// on a fake clock.
func newEngine(rate int, obs Observer, now func() time.Time) *Engine {
	if rate < 1 {
		rate = 1
	}
	e := &Engine{
		wake:      make(chan struct{}, 1),
		bursts:    map[string]*running{},
		rate:      float64(rate),
		cap:       max(1, float64(rate)/10),
		obs:       obs,
		quit:      make(chan struct{}),
		readyWait: ReadyWait,
		stopped:   make(chan struct{}),
		now:       now,
	}
	e.tokens = e.cap
	e.last = e.now()
	return e
}

// ErrClosed is returned by Start after Close.
var ErrClosed = errors.New("burst engine closed")

// Start queues b; its first round is sent as soon as the rate cap allows,
// ahead of later rounds of other bursts.
func (e *Engine) Start(b *Burst) error {
	if err := b.Schedule.Validate(); err != nil {
		return err
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return ErrClosed
	}
	now := e.now()
	var ended []*running
	if old := e.bursts[b.Key]; old != nil {
		old.res.Replaced = true
		ended = append(ended, e.cancelLocked(old))
	}
	r := &running{b: b, res: Result{Key: b.Key, Queued: now}, due: now, idx: -1}
	e.bursts[b.Key] = r
	pending := pendingWriters(b.Packets)
	if pending == nil {
		e.first = append(e.first, r)
	}
	e.finishing += len(ended)
	e.mu.Unlock()
	e.finish(ended)
	if pending != nil {
		go e.hold(r, pending)
	}
	e.poke()
	return nil
}

// pendingWriters returns the channels of the packets' writers that are not
// ready yet, nil when all are.
func pendingWriters(ps []Packet) []<-chan struct{} {
	var out []<-chan struct{}
	for i, p := range ps {
		pd, ok := p.W.(Pender)
		if !ok || (i > 0 && p.W == ps[i-1].W) {
			continue
		}
		if ch := pd.Pending(); ch != nil {
			out = append(out, ch)
		}
	}
	return out
}

// hold queues r's first round once its writers are ready, or ReadyWait
// has passed, unless it was cancelled meanwhile.
func (e *Engine) hold(r *running, pending []<-chan struct{}) {
	t := time.NewTimer(e.readyWait)
	defer t.Stop()
wait:
	for _, ch := range pending {
		select {
		case <-ch:
		case <-t.C:
			break wait
		case <-e.quit:
			return
		}
	}
	e.mu.Lock()
	if !r.dead && !e.closed {
		e.first = append(e.first, r)
	}
	e.mu.Unlock()
	e.poke()
}

// Cancel ends the burst for key, if one runs. It reports whether one did.
func (e *Engine) Cancel(key string) bool {
	e.mu.Lock()
	r := e.bursts[key]
	var ended []*running
	if r != nil {
		ended = append(ended, e.cancelLocked(r))
	}
	e.finishing += len(ended)
	e.mu.Unlock()
	e.finish(ended)
	return r != nil
}

// Active reports whether a burst for key is queued or running.
func (e *Engine) Active(key string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.bursts[key] != nil
}

// Close cancels every burst in flight and stops the engine.
func (e *Engine) Close() {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		<-e.stopped
		return
	}
	e.closed = true
	close(e.quit)
	var ended []*running
	for _, r := range e.bursts {
		ended = append(ended, e.cancelLocked(r))
	}
	e.finishing += len(ended)
	e.mu.Unlock()
	e.finish(ended)
	e.poke()
	<-e.stopped
}

// Wait blocks until no burst is queued or running and every Done has
// returned, or ctx ends.
func (e *Engine) Wait(ctx context.Context) error {
	for {
		e.mu.Lock()
		n := len(e.bursts) + e.finishing
		e.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (e *Engine) cancelLocked(r *running) *running {
	r.dead = true
	r.res.Cancelled = true
	delete(e.bursts, r.b.Key)
	if r.inHeap {
		heap.Remove(&e.later, r.idx)
	}
	// A dead entry left in e.first is skipped when reached.
	return r
}

// finish reports ended bursts outside the lock; until it has, Wait still
// counts them, so a caller of Wait sees every Done.
func (e *Engine) finish(rs []*running) {
	if len(rs) == 0 {
		return
	}
	for _, r := range rs {
		if r.b.Done != nil {
			r.b.Done(r.res)
		}
	}
	e.mu.Lock()
	e.finishing -= len(rs)
	e.mu.Unlock()
}

func (e *Engine) poke() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

func (e *Engine) loop() {
	defer close(e.stopped)
	var timer *time.Timer
	for {
		wait, done := e.step()
		if done {
			return
		}
		if wait < 0 {
			// Idle: no timer at all, only a wake-up from Start or Close.
			<-e.wake
			continue
		}
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		select {
		case <-e.wake:
			if !timer.Stop() {
				<-timer.C
			}
		case <-timer.C:
		}
	}
}

// step sends every frame that is due and allowed by the rate cap, and says
// how long to sleep: negative means idle.
func (e *Engine) step() (time.Duration, bool) {
	var ended []*running
	e.mu.Lock()
	defer func() {
		e.finishing += len(ended)
		e.mu.Unlock()
		e.finish(ended)
	}()
	for {
		if e.closed && len(e.bursts) == 0 {
			return 0, true
		}
		now := e.now()
		e.refill(now)
		r := e.pick(now, &ended)
		if r == nil {
			if len(e.later) > 0 {
				return e.later[0].due.Sub(now), false
			}
			return -1, false
		}
		if e.tokens < 1 {
			// Rounded up: a wait truncated to below one token would wake
			// early and spin on sub-nanosecond refills.
			return time.Duration(math.Ceil((1 - e.tokens) / e.rate * float64(time.Second))), false
		}
		e.tokens--
		p := r.b.Packets[r.next]
		// The write happens outside the lock: Start, Cancel and Active,
		// which the daemon calls from its event loop, never wait on a
		// writer. Only this goroutine writes, so r stays at the head of
		// its queue meanwhile unless Cancel or Start ends it; a frame
		// already being written when Cancel returns may still leave.
		e.mu.Unlock()
		err := p.W.WriteFrame(p.Data)
		e.mu.Lock()
		t := e.now()
		if e.obs != nil {
			e.obs.FrameWritten(p.Kind, err)
		}
		if r.dead {
			// Ended (and reported) while its frame was being written.
			continue
		}
		if err != nil {
			r.res.Failed++
			r.res.Err = err
		} else {
			r.res.Frames++
			if r.res.FirstFrame.IsZero() {
				r.res.FirstFrame = t
			}
			r.res.LastFrame = t
		}
		r.next++
		if r.next < len(r.b.Packets) {
			continue
		}
		// Round complete: QEMU arms the next round relative to now.
		r.next = 0
		r.round++
		r.res.Rounds = r.round
		if r.round == 1 {
			e.first = e.first[1:]
		} else {
			heap.Remove(&e.later, r.idx)
		}
		if r.round >= r.b.Schedule.Rounds {
			delete(e.bursts, r.b.Key)
			ended = append(ended, r)
			continue
		}
		r.due = t.Add(r.b.Schedule.Delay(r.b.Schedule.Rounds - r.round))
		heap.Push(&e.later, r)
	}
}

// pick returns the burst whose frame goes next: a pending first round if any,
// else the earliest due later round. Bursts with nothing to send end here as
// completed, appended to ended so step reports them once, after unlocking.
func (e *Engine) pick(now time.Time, ended *[]*running) *running {
	for len(e.first) > 0 {
		r := e.first[0]
		if !r.dead {
			if len(r.b.Packets) == 0 {
				e.first = e.first[1:]
				delete(e.bursts, r.b.Key)
				*ended = append(*ended, r)
				continue
			}
			return r
		}
		e.first = e.first[1:]
	}
	if len(e.later) > 0 && !e.later[0].due.After(now) {
		return e.later[0]
	}
	return nil
}

func (e *Engine) refill(now time.Time) {
	e.tokens += now.Sub(e.last).Seconds() * e.rate
	if e.tokens > e.cap {
		e.tokens = e.cap
	}
	e.last = now
}

type laterHeap []*running

func (h laterHeap) Len() int           { return len(h) }
func (h laterHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h laterHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *laterHeap) Push(x any) {
	r := x.(*running)
	r.idx, r.inHeap = len(*h), true
	*h = append(*h, r)
}
func (h *laterHeap) Pop() any {
	old := *h
	r := old[len(old)-1]
	*h = old[:len(old)-1]
	r.idx, r.inHeap = -1, false
	return r
}

// SetRate changes the frame-rate cap (config reload).
func (e *Engine) SetRate(rate int) {
	if rate < 1 {
		rate = 1
	}
	e.mu.Lock()
	e.rate = float64(rate)
	e.cap = max(1, float64(rate)/10)
	e.mu.Unlock()
	e.poke()
}
