package resolve

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"path"

	"github.com/selfannounce/selfannounce/announce"
)

// HostAddrs reports the MACs and addresses this host owns, so no source can
// make the agent announce them.
type HostAddrs interface {
	Owned(ctx context.Context) (macs []net.HardwareAddr, ips []netip.Addr, err error)
}

// DropHostOwned enforces "never announce an address this host owns,
// whatever the source says": host-owned IPs are dropped from g, and a
// host-owned MAC refuses the whole guest, since announcing it would steal
// the host's own traffic.
func DropHostOwned(g announce.Guest, macs []net.HardwareAddr, ips []netip.Addr) (announce.Guest, error) {
	for _, m := range macs {
		if len(m) == len(g.MAC) && bytes.Equal(m, g.MAC) {
			return announce.Guest{}, fmt.Errorf("%s: guest MAC %s is owned by this host; refusing to announce it", g.Source, g.MAC)
		}
	}
	owned := make(map[netip.Addr]bool, len(ips))
	for _, ip := range ips {
		owned[ip.Unmap().WithZone("")] = true
	}
	out := g
	out.MAC = append(net.HardwareAddr(nil), g.MAC...)
	out.IPs = nil
	for _, ip := range g.IPs {
		if !owned[ip.Unmap().WithZone("")] {
			out.IPs = append(out.IPs, ip)
		}
	}
	return out, nil
}

type filtered struct {
	r Resolver
	h HostAddrs
}

// HostFiltered applies DropHostOwned to everything r resolves, asking h
// afresh each time (host addresses change).
func HostFiltered(r Resolver, h HostAddrs) Resolver { return filtered{r, h} }

func (f filtered) Name() string { return f.r.Name() }

func (f filtered) Resolve(ctx context.Context, port string) (announce.Guest, bool, error) {
	g, known, err := f.r.Resolve(ctx, port)
	if !known {
		return g, known, err
	}
	macs, ips, err := f.h.Owned(ctx)
	if err != nil {
		// Without the host's list the rule cannot be enforced.
		return announce.Guest{}, false, fmt.Errorf("listing host addresses: %w", err)
	}
	g, err = DropHostOwned(g, macs, ips)
	if err != nil {
		return announce.Guest{}, false, err
	}
	return g, true, nil
}

// vmPort reports whether name matches one of the globs naming VM ports.
func vmPort(globs []string, name string) bool {
	for _, g := range globs {
		if ok, _ := path.Match(g, name); ok {
			return true
		}
	}
	return false
}

// DefaultVMPortGlobs name the netdevs that stand for guest NICs: Xen vifs
// and emulated-NIC taps, libvirt's vnetN and macvtapN.
var DefaultVMPortGlobs = []string{"vif*", "tap*", "vnet*", "macvtap*"}
