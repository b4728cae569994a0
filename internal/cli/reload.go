package cli

import (
	"context"
	"sync"

	"go.uber.org/zap"

	"github.com/selfannounce/selfannounce/announce/config"
	"github.com/selfannounce/selfannounce/announce/daemon"
)

// reloadable holds the config and the resolvers built from it, swapped
// together on SIGHUP.
type reloadable struct {
	mu sync.Mutex
	c  *config.Config
	r  *resolvers
}

func (r *reloadable) set(c *config.Config) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.r != nil {
		r.r.close()
	}
	r.c, r.r = c, resolverChain(c)
}

func (r *reloadable) get() *resolvers {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.r
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
}

// startOptional starts the watchers that depend on what this host runs
// (libvirt events, Open vSwitch); each logs and carries on when absent.
func startOptional(ctx context.Context, log *zap.Logger, dm *daemon.Daemon, r *reloadable) {
	startLibvirt(ctx, log, dm, r)
	startOVS(ctx, log, dm, r)
}
