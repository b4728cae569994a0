package xenstart

import (
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/announce/xenstore"
	"github.com/selfannounce/selfannounce/announce/xenstore/xenstoretest"
)

func dialer(path string) func() (Store, error) {
	return func() (Store, error) { return xenstore.Dial(path) }
}

func follow(t *testing.T, w *Watcher, domid int) (<-chan Event, func()) {
	t.Helper()
	ch := make(chan Event, 2)
	stop := w.Follow(domid, func(ev Event) { ch <- ev })
	t.Cleanup(stop)
	return ch, stop
}

func waitWatches(t *testing.T, s *xenstoretest.Server, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.Watches() != n {
		if time.Now().After(deadline) {
			t.Fatalf("xenstored has %d watches, want %d", s.Watches(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func next(t *testing.T, ch <-chan Event) Event {
	t.Helper()
	select {
	case ev := <-ch:
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event")
		return Event{}
	}
}

func none(t *testing.T, ch <-chan Event) {
	t.Helper()
	select {
	case ev := <-ch:
		t.Fatalf("unexpected event %+v", ev)
	default:
	}
}

// xl's incoming migration: the domain sits under NAME--incoming, and only
// the rename to NAME says it started here.
func TestRenameIsTheStart(t *testing.T) {
	s := xenstoretest.New(t)
	s.Write("/local/domain/7/name", "hvm1--incoming")
	ch, _ := follow(t, New(dialer(s.Path)), 7)
	waitWatches(t, s, 1)
	// The device model's "running" is no start.
	s.Write("/local/domain/0/device-model/7/state", "running")
	s.Write("/local/domain/7/name", "hvm1--incoming")
	time.Sleep(50 * time.Millisecond)
	none(t, ch)
	s.Write("/local/domain/7/name", "hvm1")
	if ev := next(t, ch); !ev.Renamed || ev.Unknown {
		t.Fatalf("event %+v, want a rename", ev)
	}
	waitWatches(t, s, 0)
}

// A domain created here, or one whose name xl never changes, has started
// as soon as it is named; it is not an incoming migration.
func TestAlreadyStarted(t *testing.T) {
	s := xenstoretest.New(t)
	s.Write("/local/domain/3/name", "web")
	ch, _ := follow(t, New(dialer(s.Path)), 3)
	if ev := next(t, ch); ev.Renamed || ev.Unknown {
		t.Fatalf("event %+v, want started, not renamed", ev)
	}
}

// The name appears after the follow began (the port showed up first).
func TestNameWrittenLater(t *testing.T) {
	s := xenstoretest.New(t)
	ch, _ := follow(t, New(dialer(s.Path)), 9)
	waitWatches(t, s, 1)
	s.Write("/local/domain/9/name", "db--incoming")
	time.Sleep(50 * time.Millisecond)
	none(t, ch)
	s.Write("/local/domain/9/name", "db")
	if ev := next(t, ch); !ev.Renamed {
		t.Fatalf("event %+v, want a rename", ev)
	}
}

// A port that leaves before its domain starts gets no report, and its
// watch is removed.
func TestStop(t *testing.T) {
	s := xenstoretest.New(t)
	s.Write("/local/domain/4/name", "x--incoming")
	ch, stop := follow(t, New(dialer(s.Path)), 4)
	waitWatches(t, s, 1)
	stop()
	waitWatches(t, s, 0)
	s.Write("/local/domain/4/name", "x")
	time.Sleep(50 * time.Millisecond)
	none(t, ch)
}

// Faults the real xenstored does not produce on demand: no answer at all,
// and the connection dropping mid-wait. Both end in an Unknown report, not
// a stuck follower.
func TestWedgedXenstored(t *testing.T) {
	path := filepath.Join(t.TempDir(), "xs")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	w := New(dialer(path))
	w.Timeout = 100 * time.Millisecond
	ch, _ := follow(t, w, 5)
	if ev := next(t, ch); !ev.Unknown || ev.Err == nil {
		t.Fatalf("event %+v, want unknown with a reason", ev)
	}
}

func TestConnectionLost(t *testing.T) {
	s := xenstoretest.New(t)
	s.Write("/local/domain/6/name", "y--incoming")
	ch, _ := follow(t, New(dialer(s.Path)), 6)
	waitWatches(t, s, 1)
	s.Close()
	if ev := next(t, ch); !ev.Unknown || ev.Err == nil {
		t.Fatalf("event %+v, want unknown with a reason", ev)
	}
}

func TestNoXenstore(t *testing.T) {
	ch, _ := follow(t, New(dialer(filepath.Join(t.TempDir(), "none"))), 1)
	if ev := next(t, ch); !ev.Unknown {
		t.Fatalf("event %+v, want unknown", ev)
	}
}
