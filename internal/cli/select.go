package cli

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/config"
	"github.com/selfannounce/selfannounce/announce/libvirtev"
	"github.com/selfannounce/selfannounce/announce/linuxbr"
	"github.com/selfannounce/selfannounce/announce/plan"
	"github.com/selfannounce/selfannounce/announce/resolve"
	"github.com/selfannounce/selfannounce/announce/xenstore"
)

// selectXen lists every vif and emulated-NIC tap of a Xen domain that exists
// on this host, with the dom0-written MAC and addresses.
func (o *oneShot) selectXen(ctx context.Context, cfg *config.Config) ([]target, error) {
	var c *xenstore.Client
	var err error
	if cfg.XenstorePath == "" || cfg.XenstorePath == "off" {
		c, err = xenstore.DialDefault()
	} else {
		c, err = xenstore.Dial(cfg.XenstorePath)
	}
	if err != nil {
		return nil, withCode(ExitUnreachable, err)
	}
	defer c.Close()
	domid := o.domid
	if o.vmUUID != "" {
		domid, err = resolve.XenDomidByUUID(ctx, c, o.vmUUID)
		if err != nil {
			return nil, xenErr(err)
		}
	}
	vifs, err := resolve.XenDomainPorts(ctx, c, domid)
	if err != nil {
		return nil, xenErr(err)
	}
	var ts []target
	for _, v := range vifs {
		g := announce.Guest{MAC: v.MAC, IPs: v.IPs, Source: "xenstore"}
		if cfg.TrustGuestIPs {
			// The resolver adds what the guest wrote under attr/vif, which
			// the operator opted into; XenDomainPorts reads dom0's only.
			if rg, ok, err := resolve.Xenstore(c, true).Resolve(ctx, v.Ports[0]); err == nil && ok && rg.MAC.String() == g.MAC.String() {
				g.IPs = rg.IPs
			}
		}
		found := false
		for _, name := range v.Ports {
			if _, err := os.Stat("/sys/class/net/" + name); err == nil {
				ts = append(ts, target{port: name, guest: g, known: true})
				found = true
			}
		}
		if !found {
			return nil, runtimeErr(fmt.Errorf("domain %d vif %d: none of its ports (%v) exists on this host", domid, v.Devid, v.Ports))
		}
	}
	if len(ts) == 0 {
		return nil, runtimeErr(fmt.Errorf("domain %d has no vifs", domid))
	}
	return o.onePerMAC(ts), nil
}

// onePerMAC keeps, for a guest seen on both its PV vif and its emulated
// tap, only the port that will carry its traffic once announced: with
// --wait-ready, both are waited for and the first to be ready is used.
func (o *oneShot) onePerMAC(ts []target) []target {
	if o.waitReady > 0 {
		return ts
	}
	seen := map[string]bool{}
	var out []target
	for _, t := range ts {
		k := t.guest.MAC.String()
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, t)
	}
	return out
}

// xenDomidMax is the last guest domain id: from DOMID_FIRST_RESERVED
// (0x7ff0) on, ids are Xen's own.
const xenDomidMax = 0x7fef

func xenErr(err error) error {
	if errors.Is(err, resolve.ErrUnknownDomain) {
		return withCode(ExitUnknown, err)
	}
	return runtimeErr(err)
}

// selectLibvirt lists every interface of a running libvirt domain: from
// libvirtd when it answers, else from its live XML.
func (o *oneShot) selectLibvirt(ctx context.Context, cfg *config.Config) ([]target, error) {
	var ts []target
	ifs, err := libvirtev.DomainInterfaces(ctx, cfg.LibvirtSocket, o.domain)
	switch {
	case err == nil:
		for _, i := range ifs {
			ts = append(ts, target{port: i.Dev, guest: announce.Guest{MAC: i.MAC, Source: "libvirt"}})
		}
	case errors.Is(err, libvirtev.ErrUnknownDomain):
		return nil, withCode(ExitUnknown, err)
	default:
		if _, serr := os.Stat(cfg.LibvirtStatusDir); serr != nil {
			return nil, withCode(ExitUnreachable, err)
		}
		xifs, xerr := resolve.LibvirtDomainInterfaces(cfg.LibvirtStatusDir, o.domain)
		if xerr != nil {
			if errors.Is(xerr, resolve.ErrUnknownDomain) {
				return nil, withCode(ExitUnknown, xerr)
			}
			return nil, runtimeErr(xerr)
		}
		for _, i := range xifs {
			ts = append(ts, target{port: i.Dev, guest: announce.Guest{MAC: i.MAC, IPs: i.IPs, Source: "libvirt"}, known: true})
		}
	}
	if len(ts) == 0 {
		return nil, runtimeErr(fmt.Errorf("domain %q has no interfaces", o.domain))
	}
	// Addresses, where libvirt has any, come from the resolvers (config,
	// live XML) with the MAC libvirt gave.
	chain := resolverChain(cfg)
	defer chain.close()
	for i := range ts {
		if ts[i].known {
			continue
		}
		if g, ok, _ := chain.Resolve(ctx, ts[i].port); ok && g.MAC.String() == ts[i].guest.MAC.String() {
			ts[i].guest.IPs = g.IPs
		}
		ts[i].known = true
	}
	return ts, nil
}

// planPath plans on the port's backend.
func (o *oneShot) planPath(ctx context.Context, lp *plan.Linux, cfg *config.Config, port string, g announce.Guest) (*plan.Plan, error) {
	pl, err := lp.Plan(port, g)
	if err == nil {
		return pl, nil
	}
	if errors.Is(err, linuxbr.ErrOVSPort) || errors.Is(err, linuxbr.ErrNotBridgePort) {
		if o.ofPool == nil {
			o.ofPool = plan.NewOFPool(nil)
		}
		if opl, oerr := planOVS(ctx, cfg, o.ofPool, port, g); oerr == nil {
			return opl, nil
		} else if !errors.Is(oerr, errNotOVS) {
			return nil, oerr
		}
	}
	return nil, err
}
