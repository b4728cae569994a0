package burst

import (
	"sync"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/announce/schedule"
)

// These tests run the real engine goroutine. Their deadlines only keep a
// broken engine from hanging the run; what they assert is order.

const never = 30 * time.Second

// gateWriter blocks each write until its gate opens, like a packet-out to a
// wedged ovs-vswitchd used to.
type gateWriter struct {
	entered chan struct{}
	gate    chan struct{}
	once    sync.Once
}

func (w *gateWriter) WriteFrame([]byte) error {
	w.once.Do(func() { close(w.entered) })
	<-w.gate
	return nil
}

// wireWriter reports every frame it writes.
type wireWriter chan string

func (w wireWriter) WriteFrame(b []byte) error { w <- string(b); return nil }

func oneRound() schedule.Schedule {
	return schedule.Schedule{Initial: time.Millisecond, Max: time.Millisecond, Rounds: 1, Step: 0}
}

// A writer that blocks must not block the engine's callers: Start, Cancel
// and Active take the engine's lock, which the engine used to hold across
// every write.
func TestBlockedWriteDoesNotHoldTheLock(t *testing.T) {
	e := New(1000, nil)
	defer e.Close()
	g := &gateWriter{entered: make(chan struct{}), gate: make(chan struct{})}
	defer close(g.gate)
	if err := e.Start(&Burst{Key: "ovs", Schedule: oneRound(), Packets: []Packet{{W: g, Kind: "rarp", Data: []byte("x")}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-g.entered:
	case <-time.After(never):
		t.Fatal("the engine never wrote")
	}
	// The write is now blocked inside the engine.
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		e.Active("ovs")
		e.Start(&Burst{Key: "linux", Schedule: oneRound(), Packets: []Packet{{W: wireWriter(make(chan string, 1)), Kind: "rarp", Data: []byte("y")}}})
		e.Cancel("linux")
	}()
	select {
	case <-returned:
	case <-time.After(never):
		t.Fatal("Active/Start/Cancel blocked behind a write in progress")
	}
}

// pendWriter is a writer whose session is still being set up until ready
// is closed.
type pendWriter struct {
	ready chan struct{}
	wire  chan string
}

func (w *pendWriter) WriteFrame(b []byte) error { w.wire <- "ovs:" + string(b); return nil }
func (w *pendWriter) Pending() <-chan struct{} {
	select {
	case <-w.ready:
		return nil
	default:
		return w.ready
	}
}

// A burst whose writer is not ready yet (an OpenFlow session still being
// dialled) is held back without holding back the bursts behind it: a
// Linux-bridge arrival queued after it goes first, and the held burst's
// frames follow once its writer is ready, none lost.
func TestPendingWriterHoldsOnlyItsBurst(t *testing.T) {
	e := newEngine(1000, nil, time.Now)
	e.readyWait = never
	go e.loop()
	defer e.Close()
	wire := make(chan string, 16)
	pw := &pendWriter{ready: make(chan struct{}), wire: wire}
	done := make(chan Result, 2)
	if err := e.Start(&Burst{Key: "ovs", Schedule: oneRound(), Packets: []Packet{{W: pw, Data: []byte("a")}, {W: pw, Data: []byte("b")}},
		Done: func(r Result) { done <- r }}); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(&Burst{Key: "linux", Schedule: oneRound(), Packets: []Packet{{W: wireWriter(wire), Data: []byte("linux:c")}},
		Done: func(r Result) { done <- r }}); err != nil {
		t.Fatal(err)
	}
	next := func() string {
		select {
		case f := <-wire:
			return f
		case <-time.After(never):
			t.Fatal("no frame")
		}
		return ""
	}
	if f := next(); f != "linux:c" {
		t.Fatalf("first frame %q, want the Linux burst's while the OVS one waits for its session", f)
	}
	if !e.Active("ovs") {
		t.Fatal("the held burst is not active")
	}
	close(pw.ready)
	if a, b := next(), next(); a != "ovs:a" || b != "ovs:b" {
		t.Fatalf("held burst wrote %q, %q; want ovs:a, ovs:b", a, b)
	}
	for range 2 {
		if r := <-done; r.Cancelled || r.Failed != 0 {
			t.Errorf("%s: %+v", r.Key, r)
		}
	}
}

// A held burst that is cancelled, or whose engine closes, never writes.
func TestPendingWriterCancelled(t *testing.T) {
	e := newEngine(1000, nil, time.Now)
	e.readyWait = never
	go e.loop()
	wire := make(chan string, 4)
	pw := &pendWriter{ready: make(chan struct{}), wire: wire}
	var res []Result
	if err := e.Start(&Burst{Key: "ovs", Schedule: oneRound(), Packets: []Packet{{W: pw, Data: []byte("a")}},
		Done: func(r Result) { res = append(res, r) }}); err != nil {
		t.Fatal(err)
	}
	if !e.Cancel("ovs") {
		t.Fatal("Cancel found no held burst")
	}
	close(pw.ready)
	e.Close()
	if len(wire) != 0 || len(res) != 1 || !res[0].Cancelled {
		t.Fatalf("frames %d, results %+v: want none written and one cancelled result", len(wire), res)
	}
}
