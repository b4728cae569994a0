// Package send writes ready-made Ethernet frames on network devices.
package send

import (
	"encoding/binary"
	"fmt"
)

// Sender writes complete Ethernet frames (destination MAC first, no FCS) on
// the device with the given ifindex.
type Sender interface {
	Send(ifindex int, frame []byte) error
	Close() error
}

// minFrame is an Ethernet header; anything shorter is not a frame.
const minFrame = 14

// TagVLAN returns a copy of frame with an 802.1Q header for vlan (priority
// 0) inserted after the source MAC: what a bridge port would add on egress,
// and what a sender writing directly on a trunk uplink must add itself. vlan
// 0 returns frame unchanged.
func TagVLAN(frame []byte, vlan uint16) ([]byte, error) {
	if vlan == 0 {
		return frame, nil
	}
	if vlan > 4094 {
		return nil, fmt.Errorf("VLAN %d is out of range 1-4094", vlan)
	}
	if len(frame) < minFrame {
		return nil, fmt.Errorf("frame of %d bytes is shorter than an Ethernet header", len(frame))
	}
	out := make([]byte, 0, len(frame)+4)
	out = append(out, frame[:12]...)
	out = binary.BigEndian.AppendUint16(out, 0x8100)
	out = binary.BigEndian.AppendUint16(out, vlan)
	return append(out, frame[12:]...), nil
}
