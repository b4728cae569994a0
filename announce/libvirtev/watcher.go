package libvirtev

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"
	"go.uber.org/zap"
)

// Event says a domain that migrated in has just started running here.
type Event struct {
	Domain string
	UUID   string
	// Detail is "migrated" (the end of a precopy migration) or "postcopy"
	// (the guest runs here while its memory is still being pulled over).
	Detail string
	At     time.Time
}

// Detail values.
const (
	DetailMigrated = "migrated"
	DetailPostcopy = "postcopy"
)

// Classify decides whether a lifecycle event (libvirt's event and detail
// numbers) is a migration arrival. A plain resume (UNPAUSED), a snapshot
// revert and a failed postcopy are not: the guest's MAC never moved.
func Classify(event, detail int32) (string, bool) {
	if libvirt.DomainEventType(event) != libvirt.DomainEventResumed {
		return "", false
	}
	switch libvirt.DomainEventResumedDetailType(detail) {
	case libvirt.DomainEventResumedMigrated:
		return DetailMigrated, true
	case libvirt.DomainEventResumedPostcopy:
		return DetailPostcopy, true
	}
	return "", false
}

// Backoff between reconnection attempts: quick enough to catch a libvirtd
// restart during a migration wave, slow enough not to spin on a host that
// has no libvirtd at all.
const (
	minBackoff = 500 * time.Millisecond
	maxBackoff = 30 * time.Second
)

// Watcher follows one libvirtd's lifecycle events across its restarts.
type Watcher struct {
	ep        endpoint
	epErr     error
	log       *zap.Logger
	connected atomic.Bool
	subs      atomic.Int64
	// postcopy holds domains (by UUID) reported at RESUMED/POSTCOPY whose
	// RESUMED/MIGRATED is still to come; only Run's goroutine touches it.
	postcopy map[string]bool
}

// New returns a watcher for the libvirtd at uri: "" or "qemu:///system" for
// the system daemon, a socket path, or a local URI with ?socket=. A bad URI
// is reported by Run.
func New(uri string, log *zap.Logger) *Watcher {
	if log == nil {
		log = zap.NewNop()
	}
	ep, err := parseEndpoint(uri)
	return &Watcher{ep: ep, epErr: err, log: log.With(zap.String("libvirt", ep.socket)), postcopy: map[string]bool{}}
}

// Connected reports whether the watcher is subscribed right now.
func (w *Watcher) Connected() bool { return w.connected.Load() }

// Subscriptions counts the subscriptions made so far; more than one means
// libvirtd went away and came back (worth a metric).
func (w *Watcher) Subscriptions() int64 { return w.subs.Load() }

// Run subscribes to lifecycle events and calls fn once for each migration
// arrival (a postcopy migration's later RESUMED/MIGRATED is folded into its
// RESUMED/POSTCOPY), in order, from a single goroutine; fn should return quickly. When
// libvirtd goes away Run reconnects with backoff. It returns only when ctx
// ends (with ctx's error) or the URI is unusable.
func (w *Watcher) Run(ctx context.Context, fn func(Event)) error {
	if w.epErr != nil {
		return w.epErr
	}
	backoff := minBackoff
	failing := false
	for {
		subscribed, err := w.session(ctx, fn)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if subscribed {
			backoff = minBackoff
			failing = false
		}
		// The first failure in a row is news; repeats of it (no libvirtd on
		// this host, or a long restart) are not.
		if !failing {
			w.log.Warn("libvirt event subscription down, retrying", zap.Error(err))
			failing = true
		} else {
			w.log.Debug("libvirt still unreachable", zap.Error(err), zap.Duration("retry_in", backoff))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

// session is one connection's life: subscribe, deliver, and return why it
// ended and whether it got as far as subscribing.
func (w *Watcher) session(ctx context.Context, fn func(Event)) (bool, error) {
	l, err := w.ep.dial()
	if err != nil {
		return false, err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := l.LifecycleEvents(sctx)
	if err != nil {
		l.Disconnect()
		return false, err
	}
	w.connected.Store(true)
	w.subs.Add(1)
	defer w.connected.Store(false)
	w.log.Info("subscribed to libvirt lifecycle events")
	for {
		select {
		case <-ctx.Done():
			cancel()
			l.Disconnect()
			return true, ctx.Err()
		case ev, ok := <-ch:
			if !ok {
				l.Disconnect()
				return true, errors.New("connection to libvirtd lost")
			}
			uuid := formatUUID(ev.Dom.UUID)
			detail, arrival := Classify(ev.Event, ev.Detail)
			if !arrival {
				switch libvirt.DomainEventType(ev.Event) {
				case libvirt.DomainEventStarted, libvirt.DomainEventStopped:
					delete(w.postcopy, uuid)
				}
				continue
			}
			// A postcopy migration resumes twice: POSTCOPY when the guest
			// starts running here, MIGRATED when the last page has arrived.
			// It is one arrival, and the first event is the one that counts.
			if detail == DetailMigrated && w.postcopy[uuid] {
				delete(w.postcopy, uuid)
				w.log.Debug("postcopy migration completed", zap.String("domain", ev.Dom.Name))
				continue
			}
			if detail == DetailPostcopy {
				w.postcopy[uuid] = true
			}
			e := Event{Domain: ev.Dom.Name, UUID: uuid, Detail: detail, At: time.Now()}
			w.log.Info("domain resumed after migration", zap.String("domain", e.Domain), zap.String("uuid", e.UUID), zap.String("detail", e.Detail))
			fn(e)
		}
	}
}
