package resolve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/xenstore"
)

// XenstoreReader is the part of *xenstore.Client the resolvers use.
type XenstoreReader interface {
	Read(ctx context.Context, path string) (string, error)
	Directory(ctx context.Context, path string) ([]string, error)
}

// domidMax is DOMID_FIRST_RESERVED: ids from 0x7ff0 up are special.
const domidMax = 0x7fef

// maxGuestIPs bounds what one guest can make us read and announce.
const maxGuestIPs = 32

// ParseXenPort recognises the netdevs Xen names after a guest NIC:
// vif<domid>.<devid> (netback), vif<domid>.<devid>-emu (xl's tap for an HVM
// emulated NIC) and tap<domid>.<devid> (XenServer's). Domain 0 is the host
// and never a guest.
func ParseXenPort(name string) (domid, devid int, ok bool) {
	var rest string
	switch {
	case strings.HasPrefix(name, "vif"):
		rest = strings.TrimSuffix(name[3:], "-emu")
	case strings.HasPrefix(name, "tap"):
		rest = name[3:]
	default:
		return 0, 0, false
	}
	d, n, found := strings.Cut(rest, ".")
	if !found {
		return 0, 0, false
	}
	domid, ok1 := decimal(d)
	devid, ok2 := decimal(n)
	if !ok1 || !ok2 || domid == 0 || domid > domidMax {
		return 0, 0, false
	}
	return domid, devid, true
}

// decimal accepts plain non-negative decimal numbers without sign or
// leading zeros, as Xen prints them.
func decimal(s string) (int, bool) {
	if s == "" || len(s) > 9 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(s)
	return n, err == nil
}

// XenPortNames are the netdev names a domain's vif devid can appear as.
func XenPortNames(domid, devid int) []string {
	return []string{
		fmt.Sprintf("vif%d.%d", domid, devid),
		fmt.Sprintf("vif%d.%d-emu", domid, devid),
		fmt.Sprintf("tap%d.%d", domid, devid),
	}
}

type xenResolver struct {
	c     XenstoreReader
	trust bool
}

// Xenstore resolves Xen ports from the vif backend entries dom0's
// toolstack writes. Addresses a guest writes itself (attr/vif/...) are
// used only when trustGuestIPs is set: guests are untrusted, and nothing a
// guest writes may make the host claim an address unless the operator
// opted in.
func Xenstore(c XenstoreReader, trustGuestIPs bool) Resolver {
	return &xenResolver{c: c, trust: trustGuestIPs}
}

func (*xenResolver) Name() string { return "xenstore" }

func backendPath(domid, devid int) string {
	return fmt.Sprintf("/local/domain/0/backend/vif/%d/%d", domid, devid)
}

func (x *xenResolver) Resolve(ctx context.Context, port string) (announce.Guest, bool, error) {
	domid, devid, ok := ParseXenPort(port)
	if !ok {
		return announce.Guest{}, false, nil
	}
	vif, err := readVif(ctx, x.c, domid, devid)
	if errors.Is(err, xenstore.ErrNotExist) {
		return announce.Guest{}, false, nil // stale or foreign port name
	}
	if err != nil {
		return announce.Guest{}, false, err
	}
	g := announce.Guest{MAC: vif.MAC, IPs: vif.IPs, Source: "xenstore"}
	if x.trust {
		for _, fam := range []string{"ipv4", "ipv6"} {
			g.IPs, err = x.guestIPs(ctx, fmt.Sprintf("/local/domain/%d/attr/vif/%d/%s", domid, devid, fam), g.IPs)
			if err != nil {
				return announce.Guest{}, false, err
			}
		}
	}
	return g, true, nil
}

// guestIPs reads <dir>/<n> as guest agents write them. The guest controls
// every byte here, so anything odd is skipped; only a broken connection is
// an error.
func (x *xenResolver) guestIPs(ctx context.Context, dir string, into []netip.Addr) ([]netip.Addr, error) {
	names, err := x.c.Directory(ctx, dir)
	if err != nil {
		return into, transportErr(err)
	}
	var idx []int
	for _, n := range names {
		if i, ok := decimal(n); ok {
			idx = append(idx, i)
		}
	}
	sort.Ints(idx)
	if len(idx) > maxGuestIPs {
		idx = idx[:maxGuestIPs]
	}
	for _, i := range idx {
		v, err := x.c.Read(ctx, fmt.Sprintf("%s/%d", dir, i))
		if err != nil {
			if err = transportErr(err); err != nil {
				return into, err
			}
			continue
		}
		if ip, ok := parseAddr(strings.TrimSpace(v)); ok {
			into = appendUnique(into, ip)
		}
	}
	return into, nil
}

// transportErr keeps errors that mean the connection failed and drops
// xenstored's per-path refusals (ENOENT, EACCES, ...).
func transportErr(err error) error {
	var xe *xenstore.Error
	if err == nil || errors.As(err, &xe) {
		return nil
	}
	return err
}

// junkError marks data that is present but unusable.
type junkError struct{ error }

func (e junkError) Unwrap() error { return e.error }

// XenVif is one of a domain's network interfaces as dom0 recorded it.
type XenVif struct {
	Domid, Devid int
	MAC          net.HardwareAddr
	IPs          []netip.Addr // dom0-written only
	// Ports are the netdev names this vif can appear as on the host.
	Ports []string
}

func readVif(ctx context.Context, c XenstoreReader, domid, devid int) (XenVif, error) {
	base := backendPath(domid, devid)
	macStr, err := c.Read(ctx, base+"/mac")
	if err != nil {
		return XenVif{}, err
	}
	mac, err := announce.ParseMAC(strings.TrimSpace(macStr))
	if err != nil {
		return XenVif{}, junkError{fmt.Errorf("%s/mac: %v", base, err)}
	}
	v := XenVif{Domid: domid, Devid: devid, MAC: mac, Ports: XenPortNames(domid, devid)}
	ipStr, err := c.Read(ctx, base+"/ip")
	switch {
	case err == nil:
		v.IPs = parseAddrList(ipStr, nil)
	case !errors.Is(err, xenstore.ErrNotExist):
		if err = transportErr(err); err != nil {
			return XenVif{}, err
		}
	}
	return v, nil
}

// XenDomainPorts lists domid's vifs from dom0's backend entries, for
// announcing a whole VM. A vif with an unusable MAC is left out; if that
// leaves none, the error says why.
func XenDomainPorts(ctx context.Context, c XenstoreReader, domid int) ([]XenVif, error) {
	if domid <= 0 || domid > domidMax {
		return nil, fmt.Errorf("domid %d is not a guest domain id", domid)
	}
	if _, err := c.Read(ctx, fmt.Sprintf("/local/domain/%d", domid)); err != nil {
		if errors.Is(err, xenstore.ErrNotExist) {
			return nil, fmt.Errorf("domid %d: %w", domid, ErrUnknownDomain)
		}
		return nil, err
	}
	names, err := c.Directory(ctx, fmt.Sprintf("/local/domain/0/backend/vif/%d", domid))
	if errors.Is(err, xenstore.ErrNotExist) {
		return nil, nil // a domain without network interfaces
	}
	if err != nil {
		return nil, err
	}
	var devids []int
	for _, n := range names {
		if d, ok := decimal(n); ok {
			devids = append(devids, d)
		}
	}
	sort.Ints(devids)
	var vifs []XenVif
	var errs []error
	for _, d := range devids {
		v, err := readVif(ctx, c, domid, d)
		if errors.Is(err, xenstore.ErrNotExist) {
			continue // unplugged while we looked
		}
		if err != nil {
			var junk junkError
			if transportErr(err) != nil && !errors.As(err, &junk) {
				return nil, err
			}
			errs = append(errs, err)
			continue
		}
		vifs = append(vifs, v)
	}
	if len(vifs) == 0 && len(errs) > 0 {
		return nil, fmt.Errorf("domid %d has no usable vif: %w", domid, errors.Join(errs...))
	}
	return vifs, nil
}

// XenDomidByUUID finds the running domain with the given VM UUID by
// scanning /local/domain/*/vm, whose value is "/vm/<uuid>". Some
// toolstacks suffix that path, so a `uuid` key beside `vm`, or inside the
// vm path, is accepted too. If a local migration leaves two domains with
// the UUID, the newer (higher domid) is the one arriving.
func XenDomidByUUID(ctx context.Context, c XenstoreReader, uuid string) (int, error) {
	u := strings.ToLower(strings.TrimSpace(uuid))
	if !ValidUUID(u) {
		return 0, fmt.Errorf("malformed VM UUID %q", uuid)
	}
	names, err := c.Directory(ctx, "/local/domain")
	if err != nil {
		return 0, err
	}
	found := -1
	for _, n := range names {
		domid, ok := decimal(n)
		if !ok || domid == 0 || domid > domidMax || domid < found {
			continue
		}
		match, err := domainHasUUID(ctx, c, domid, u)
		if err != nil {
			return 0, err
		}
		if match {
			found = domid
		}
	}
	if found < 0 {
		return 0, fmt.Errorf("VM UUID %s: %w", u, ErrUnknownDomain)
	}
	return found, nil
}

func domainHasUUID(ctx context.Context, c XenstoreReader, domid int, u string) (bool, error) {
	base := fmt.Sprintf("/local/domain/%d", domid)
	read := func(p string) (string, error) {
		v, err := c.Read(ctx, p)
		if err != nil {
			return "", transportErr(err)
		}
		return strings.ToLower(strings.TrimSpace(v)), nil
	}
	vm, err := read(base + "/vm")
	if err != nil {
		return false, err
	}
	if vm == "/vm/"+u {
		return true, nil
	}
	if v, err := read(base + "/uuid"); err != nil || v == u {
		return v == u, err
	}
	if strings.HasPrefix(vm, "/vm/") && !strings.ContainsAny(vm, "\x00") {
		v, err := read(vm + "/uuid")
		return v == u, err
	}
	return false, nil
}

// ValidUUID accepts the 8-4-4-4-12 hex form XAPI and xl print, in either
// case.
func ValidUUID(u string) bool {
	if len(u) != 36 {
		return false
	}
	for i, c := range strings.ToLower(u) {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return false
			}
		}
	}
	return true
}
