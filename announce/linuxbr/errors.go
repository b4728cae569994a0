// Package linuxbr finds the path a guest's frames take out of a Linux-bridge
// host, and repairs the host bridge's forwarding database when a guest
// arrives.
//
// Announcements are written directly on the bridge's uplinks: a frame written
// on the bridge device is flooded to every port, the guest's own included, and
// one written on the VM port would be delivered to the guest instead of the
// network. Writing on an uplink bypasses the bridge, so the caller must add
// the 802.1Q tag the bridge would have added (Uplink.VLAN).
package linuxbr

import (
	"errors"
	"fmt"
	"net"
)

// Sentinel errors. Each is returned wrapped with the interface it concerns,
// as `interface "vif3.0" is not a bridge port`, so errors.Is works and the
// message reads as one line.
var (
	ErrNotFound      = errors.New("does not exist")
	ErrNotBridgePort = errors.New("is not a bridge port")
	ErrNoUplink      = errors.New("has no uplink")
	// ErrNoForwardingUplink: the bridge has uplinks, but none has carrier
	// and forwards. It also matches ErrNoUplink.
	ErrNoForwardingUplink error = noForwardingUplink{}
	// ErrOVSPort marks a port of the kernel Open vSwitch datapath, which
	// needs OpenFlow rather than a path through a Linux bridge.
	ErrOVSPort = errors.New("is an Open vSwitch port, not a Linux bridge port")
	// ErrNoPVID marks a VM port of a VLAN-filtering bridge without a PVID:
	// the bridge drops the guest's untagged frames, so there is no VLAN to
	// announce on.
	ErrNoPVID = errors.New("has no PVID")
	// ErrHostOwnedMAC is returned when the MAC is the host's own: the host
	// must never hand its own address to a guest.
	ErrHostOwnedMAC = errors.New("belongs to the host")
)

func ifErr(name string, err error) error {
	return fmt.Errorf("interface %q %w", name, err)
}

func ifErrf(name string, err error, format string, args ...any) error {
	return fmt.Errorf("interface %q %w"+format, append([]any{name, err}, args...)...)
}

// ErrRefused matches every *RefusedError.
var ErrRefused = errors.New("FDB repair refused")

// RefusalReason says why RepairFDB left an entry alone. The values are the
// reason label of selfannounce_fdb_refusals_total.
type RefusalReason string

// Reasons for refusing an FDB repair.
const (
	// RefuseLocal: a local (permanent) entry, the host's own address.
	RefuseLocal RefusalReason = "local"
	// RefuseStatic: a static (NUD_NOARP) or sticky entry someone pinned.
	RefuseStatic RefusalReason = "static"
	// RefuseExternal: an externally learned entry (NTF_EXT_LEARNED), owned
	// by a control plane such as FRR's EVPN.
	RefuseExternal RefusalReason = "extern_learn"
	// RefuseVMPort: a dynamic entry on another live port of the bridge,
	// another VM's.
	RefuseVMPort RefusalReason = "vm_port"
)

// RefusedError is RepairFDB's refusal to move an entry it does not own.
// It matches ErrRefused, and ErrHostOwnedMAC for a local entry.
type RefusedError struct {
	Reason RefusalReason
	MAC    net.HardwareAddr
	VLAN   uint16
	Bridge string
	Port   string // the VM port the repair was for
	On     string // the port the entry points at, "" when unknown or the bridge
}

func (e *RefusedError) Error() string {
	switch e.Reason {
	case RefuseLocal:
		on := ""
		if e.On != "" {
			on = fmt.Sprintf(" on port %q", e.On)
		}
		return fmt.Sprintf("MAC %s %v: it is a local entry of bridge %q%s", e.MAC, ErrHostOwnedMAC, e.Bridge, on)
	case RefuseStatic:
		return fmt.Sprintf("MAC %s: bridge %q has a static entry for it on %q; not moving it to %q (remove the entry to let selfannounce manage the MAC)", e.MAC, e.Bridge, e.On, e.Port)
	case RefuseExternal:
		return fmt.Sprintf("MAC %s: bridge %q has an externally learned entry for it on %q (a control plane owns it); not moving it to %q", e.MAC, e.Bridge, e.On, e.Port)
	case RefuseVMPort:
		return fmt.Sprintf("MAC %s: bridge %q has it on live port %q, not an uplink; not moving it to %q (another guest uses that MAC)", e.MAC, e.Bridge, e.On, e.Port)
	}
	return fmt.Sprintf("MAC %s: %v (%s)", e.MAC, ErrRefused, e.Reason)
}

// Is makes errors.Is(err, ErrRefused) hold for every refusal and
// errors.Is(err, ErrHostOwnedMAC) for a local entry.
func (e *RefusedError) Is(target error) bool {
	return target == ErrRefused || (target == ErrHostOwnedMAC && e.Reason == RefuseLocal)
}

// Permanent tells retrying callers (the daemon) that the same repair
// would be refused again: the entry's owner has to act first.
func (e *RefusedError) Permanent() bool { return true }

type noForwardingUplink struct{}

func (noForwardingUplink) Error() string        { return "has no forwarding uplink" }
func (noForwardingUplink) Is(target error) bool { return target == ErrNoUplink }
