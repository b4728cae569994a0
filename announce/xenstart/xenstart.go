// Package xenstart tells when a Xen domain has started on this host.
//
// xl's migrate-receive restores an incoming domain paused, under the name
// NAME--incoming, and renames it to NAME only once the sender has given the
// guest up, right before unpausing it (tools/xl/xl_migrate.c). For an HVM
// guest without PV drivers that rename is the first sign in dom0 that the
// guest runs here: its emulated NIC's tap (vifN.M-emu) has carrier from the
// moment the device model opens it, joins the bridge while the domain is
// still paused and the source only suspended, the device model writes
// "running" to xenstore at its start, and a silent guest never sends a
// frame. The name is written by dom0 under a node the guest may only read,
// so a guest cannot fake its own start.
package xenstart

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/selfannounce/selfannounce/announce/xenstore"
)

// IncomingSuffix marks a domain xl is still receiving.
const IncomingSuffix = "--incoming"

// Store is the part of *xenstore.Client the watcher uses.
type Store interface {
	Read(ctx context.Context, path string) (string, error)
	Watch(ctx context.Context, path, token string) (<-chan string, func() error, error)
}

// Event is what Follow reports, once.
type Event struct {
	// Renamed: the domain was seen under xl's incoming name and then
	// under its own: an incoming migration (or restore) that committed
	// while it was followed.
	Renamed bool
	// Unknown: xenstore could not tell (unreachable, a failed or wedged
	// read, the watch lost); Err says why. The caller decides.
	Unknown bool
	Err     error
	At      time.Time
}

// Watcher follows domains' names over one xenstore connection, dialled on
// first use and again after it breaks.
type Watcher struct {
	dial func() (Store, error)
	// Timeout bounds each xenstore request: a wedged xenstored yields an
	// Unknown event, never a stuck follower.
	Timeout time.Duration

	mu    sync.Mutex
	store Store
	n     atomic.Uint64
}

// New returns a watcher that connects with dial.
func New(dial func() (Store, error)) *Watcher {
	return &Watcher{dial: dial, Timeout: 5 * time.Second}
}

// Follow reports through fn, once and from another goroutine, when domain
// domid runs here under its own name: at once if it already does, or when
// xl renames it. An incoming domain that never commits is never reported.
// stop ends the follow; a report racing with stop may still arrive, so fn
// checks that what it was for still exists.
func (w *Watcher) Follow(domid int, fn func(Event)) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		ev, ok := w.follow(ctx, domid)
		if ok && ctx.Err() == nil {
			ev.At = time.Now()
			fn(ev)
		}
	}()
	return cancel
}

func (w *Watcher) follow(ctx context.Context, domid int) (Event, bool) {
	unknown := func(err error) (Event, bool) { return Event{Unknown: true, Err: err}, true }
	s, err := w.client()
	if err != nil {
		return unknown(err)
	}
	path := fmt.Sprintf("/local/domain/%d/name", domid)
	token := fmt.Sprintf("selfannounce-start-%d-%d", domid, w.n.Add(1))
	wctx, cancel := context.WithTimeout(ctx, w.Timeout)
	events, unwatch, err := s.Watch(wctx, path, token)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return Event{}, false
		}
		w.drop(s)
		return unknown(fmt.Errorf("watching %s: %w", path, err))
	}
	defer func() { go unwatch() }()
	incoming := false
	for {
		// Every event, including the watch's first, is only a hint to
		// read the name again.
		select {
		case <-ctx.Done():
			return Event{}, false
		case _, open := <-events:
			if !open {
				if ctx.Err() != nil {
					return Event{}, false
				}
				w.drop(s)
				return unknown(errors.New("xenstore connection lost while waiting for the domain to start"))
			}
		}
		rctx, cancel := context.WithTimeout(ctx, w.Timeout)
		name, err := s.Read(rctx, path)
		cancel()
		switch {
		case ctx.Err() != nil:
			return Event{}, false
		case errors.Is(err, xenstore.ErrNotExist):
			// Not written yet, or the domain is gone: the port leaving
			// stops this follow.
			continue
		case err != nil:
			return unknown(fmt.Errorf("reading %s: %w", path, err))
		case strings.HasSuffix(name, IncomingSuffix):
			incoming = true
			continue
		}
		return Event{Renamed: incoming}, true
	}
}

func (w *Watcher) client() (Store, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.store != nil {
		return w.store, nil
	}
	s, err := w.dial()
	if err != nil {
		return nil, err
	}
	w.store = s
	return s, nil
}

// drop forgets a connection that failed, so the next follow dials anew.
func (w *Watcher) drop(s Store) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.store == s {
		if c, ok := s.(interface{ Close() error }); ok {
			c.Close()
		}
		w.store = nil
	}
}
