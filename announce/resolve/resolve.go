// Package resolve finds the guest behind a host port: its MAC and the
// addresses to announce for it. Each source (operator config, xenstore,
// libvirt's live XML) is a Resolver; a Chain asks them in order.
//
// Everything a source reports is checked: MACs must pass
// announce.CheckGuestMAC and addresses announce.AnnounceableIP, junk is
// dropped, and DropHostOwned keeps the host from ever claiming an address
// of its own, whatever a source says.
package resolve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path"

	"github.com/selfannounce/selfannounce/announce"
)

// Resolver maps a port name to the guest behind it. known is false, with a
// nil error, when the port is not one this source describes.
type Resolver interface {
	Name() string
	Resolve(ctx context.Context, port string) (g announce.Guest, known bool, err error)
}

// ErrUnknownDomain is returned when a VM named by domid, UUID or libvirt
// name does not exist on this host.
var ErrUnknownDomain = errors.New("no such domain on this host")

// Chain asks each resolver in order; the first that knows the port wins.
// One resolver failing (xenstore unreachable on a KVM host, say) does not
// stop the others: its error is reported only if no resolver knows the
// port.
type Chain []Resolver

// Name is "chain".
func (Chain) Name() string { return "chain" }

// Resolve returns the first resolver's answer that knows port. When none
// does, the error joins every resolver's error (nil if none failed).
func (c Chain) Resolve(ctx context.Context, port string) (announce.Guest, bool, error) {
	var errs []error
	for _, r := range c {
		g, known, err := r.Resolve(ctx, port)
		if known {
			return g, true, nil
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.Name(), err))
		}
	}
	return announce.Guest{}, false, errors.Join(errs...)
}

// StaticEntry is one operator-configured guest.
type StaticEntry struct {
	// Port is a port name or a shell glob (path.Match syntax).
	Port string
	MAC  net.HardwareAddr
	IPs  []netip.Addr
}

type static []StaticEntry

// Static resolves from operator configuration: the first entry whose Port
// matches wins.
func Static(entries []StaticEntry) Resolver {
	return static(append([]StaticEntry(nil), entries...))
}

func (static) Name() string { return "config" }

func (s static) Resolve(_ context.Context, port string) (announce.Guest, bool, error) {
	for _, e := range s {
		ok, err := path.Match(e.Port, port)
		if err != nil {
			return announce.Guest{}, false, fmt.Errorf("port pattern %q: %v", e.Port, err)
		}
		if !ok {
			continue
		}
		if err := announce.CheckGuestMAC(e.MAC); err != nil {
			return announce.Guest{}, false, fmt.Errorf("entry for %q: MAC %s: %v", e.Port, e.MAC, err)
		}
		g := announce.Guest{MAC: append(net.HardwareAddr(nil), e.MAC...), Source: "config"}
		for _, ip := range e.IPs {
			if ip = ip.Unmap(); announce.AnnounceableIP(ip) && ip.Zone() == "" {
				g.IPs = appendUnique(g.IPs, ip)
			}
		}
		return g, true, nil
	}
	return announce.Guest{}, false, nil
}

func appendUnique(ips []netip.Addr, ip netip.Addr) []netip.Addr {
	for _, x := range ips {
		if x == ip {
			return ips
		}
	}
	return append(ips, ip)
}

// parseAddrList reads addresses as xenstore and config files write them:
// whitespace-separated, each bare or with a /prefix. Anything that is not an
// announceable unicast address is dropped.
func parseAddrList(s string, into []netip.Addr) []netip.Addr {
	for _, f := range splitFields(s) {
		if ip, ok := parseAddr(f); ok {
			into = appendUnique(into, ip)
		}
	}
	return into
}

func parseAddr(s string) (netip.Addr, bool) {
	if p, err := netip.ParsePrefix(s); err == nil {
		s = p.Addr().String()
	}
	ip, err := announce.ParseIP(s)
	return ip, err == nil
}

func splitFields(s string) []string {
	var out []string
	start := -1
	for i := 0; i <= len(s); i++ {
		sep := i == len(s) || s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r' || s[i] == ','
		if sep {
			if start >= 0 {
				out = append(out, s[start:i])
				start = -1
			}
		} else if start < 0 {
			start = i
		}
	}
	return out
}
