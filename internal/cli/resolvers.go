package cli

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/config"
	"github.com/selfannounce/selfannounce/announce/resolve"
	"github.com/selfannounce/selfannounce/announce/xenstore"
)

// resolvers is the identity chain of issue order: config, xenstore, libvirt.
type resolvers struct {
	chain resolve.Chain
	xen   *lazyXen
}

func resolverChain(cfg *config.Config) *resolvers {
	var static []resolve.StaticEntry
	for _, g := range cfg.Guests {
		static = append(static, resolve.StaticEntry{Port: g.Port, MAC: g.MAC, IPs: g.IPs})
	}
	r := &resolvers{chain: resolve.Chain{resolve.Static(static)}}
	if cfg.XenstorePath != "off" {
		r.xen = &lazyXen{path: cfg.XenstorePath}
		r.chain = append(r.chain, resolve.Xenstore(r.xen, cfg.TrustGuestIPs))
	}
	r.chain = append(r.chain, resolve.Libvirt(cfg.LibvirtStatusDir))
	return r
}

// Resolve returns the first identity found; errs explains misses.
func (r *resolvers) Resolve(ctx context.Context, port string) (announce.Guest, bool, []error) {
	g, ok, err := r.chain.Resolve(ctx, port)
	if err != nil && !ok {
		return g, false, []error{err}
	}
	return g, ok, nil
}

func (r *resolvers) close() {
	if r.xen != nil {
		r.xen.close()
	}
}

// lazyXen dials xenstored on first use and again after the connection
// breaks: xenstored restarts, and on KVM hosts there is none at all.
type lazyXen struct {
	path string
	mu   sync.Mutex
	c    *xenstore.Client
}

var errNoXenstore = errors.New("xenstore not reachable")

func (x *lazyXen) client() (*xenstore.Client, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.c != nil {
		return x.c, nil
	}
	var c *xenstore.Client
	var err error
	if x.path == "" {
		c, err = xenstore.DialDefault()
	} else {
		c, err = xenstore.Dial(x.path)
	}
	if err != nil {
		return nil, errNoXenstore
	}
	x.c = c
	return c, nil
}

func (x *lazyXen) drop(c *xenstore.Client, err error) {
	if err == nil || errors.Is(err, xenstore.ErrNotExist) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return
	}
	var xe *xenstore.Error
	if errors.As(err, &xe) {
		return // the server answered: the connection is fine
	}
	x.mu.Lock()
	if x.c == c {
		x.c.Close()
		x.c = nil
	}
	x.mu.Unlock()
}

func (x *lazyXen) Read(ctx context.Context, path string) (string, error) {
	c, err := x.client()
	if err != nil {
		return "", err
	}
	v, err := c.Read(ctx, path)
	x.drop(c, err)
	return v, err
}

func (x *lazyXen) Directory(ctx context.Context, path string) ([]string, error) {
	c, err := x.client()
	if err != nil {
		return nil, err
	}
	v, err := c.Directory(ctx, path)
	x.drop(c, err)
	return v, err
}

func (x *lazyXen) close() {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.c != nil {
		x.c.Close()
		x.c = nil
	}
}

// hostOwned lists the host's own addresses for the never-claim rule.
func hostOwned(vmPorts []string) func(context.Context) ([]net.HardwareAddr, []netip.Addr, error) {
	return func(ctx context.Context) ([]net.HardwareAddr, []netip.Addr, error) {
		h, err := resolve.SystemHostAddrs(vmPorts)
		if err != nil {
			return nil, nil, err
		}
		return h.Owned(ctx)
	}
}
