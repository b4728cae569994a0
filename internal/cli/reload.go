package cli

import (
	"context"
	"errors"
	"sync"

	"go.uber.org/zap"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/config"
	"github.com/selfannounce/selfannounce/announce/daemon"
)

// reloadable holds the config and the resolvers built from it, swapped
// together on SIGHUP. The resolvers a SIGHUP retires are closed once the
// last resolve using them has returned, not under it: closing the xenstore
// client in the middle of a read failed that arrival.
type reloadable struct {
	mu sync.Mutex
	c  *config.Config
	r  *resolvers
	// refs counts resolves in progress per resolver set.
	refs    map[*resolvers]int
	retired map[*resolvers]bool
}

func (r *reloadable) set(c *config.Config) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.refs == nil {
		r.refs, r.retired = map[*resolvers]int{}, map[*resolvers]bool{}
	}
	if old := r.r; old != nil {
		if r.refs[old] == 0 {
			old.close()
		} else {
			r.retired[old] = true
		}
	}
	r.c, r.r = c, resolverChain(c)
}

// acquire returns the resolvers in force, kept open until release.
func (r *reloadable) acquire() *resolvers {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.refs == nil {
		r.refs, r.retired = map[*resolvers]int{}, map[*resolvers]bool{}
	}
	r.refs[r.r]++
	return r.r
}

func (r *reloadable) release(rs *resolvers) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refs[rs]--
	if r.refs[rs] > 0 {
		return
	}
	delete(r.refs, rs)
	if r.retired[rs] {
		delete(r.retired, rs)
		rs.close()
	}
}

func (r *reloadable) cfg() *config.Config {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.c
}

func (r *reloadable) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.r != nil {
		r.r.close()
	}
	for rs := range r.retired {
		rs.close()
	}
	r.retired = nil
}

// resolve asks the resolvers in force, as the daemon's Resolve.
func (r *reloadable) resolve(ctx context.Context, port string) (announce.Guest, bool, error) {
	rs := r.acquire()
	defer r.release(rs)
	g, ok, errs := rs.Resolve(ctx, port)
	if len(errs) > 0 {
		return g, ok, errors.Join(errs...)
	}
	return g, ok, nil
}

// startOptional starts the watchers that depend on what this host runs
// (libvirt events, Open vSwitch); each logs and carries on when absent.
func startOptional(ctx context.Context, log *zap.Logger, dm *daemon.Daemon, r *reloadable) {
	startLibvirt(ctx, log, dm, r)
	startOVS(ctx, log, dm, r)
}
