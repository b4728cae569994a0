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
)

// Sentinel errors. Each is returned wrapped with the interface it concerns,
// as `interface "vif3.0" is not a bridge port`, so errors.Is works and the
// message reads as one line.
var (
	ErrNotFound      = errors.New("does not exist")
	ErrNotBridgePort = errors.New("is not a bridge port")
	ErrNoUplink      = errors.New("has no uplink")
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
