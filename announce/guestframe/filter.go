// Package guestframe tells when a guest has really started: it waits for the
// first frame the guest sends into the host through its port. A tap has
// carrier from the moment QEMU opens it, long before an incoming VM runs, so
// carrier cannot mark the arrival; the guest's first frame (QEMU's own RARP
// after the migration state has loaded, or any guest traffic) can.
package guestframe

import "golang.org/x/net/bpf"

// snapLen keeps only the Ethernet header: the source MAC is all Wait needs.
const snapLen = 14

const packetOutgoing = 4 // PACKET_OUTGOING

// program passes frames that entered the host from the guest with a unicast,
// non-zero source MAC. Frames the bridge floods towards the guest cross the
// same port as PACKET_OUTGOING and must not count as the guest speaking.
func program() []bpf.Instruction {
	return []bpf.Instruction{
		bpf.LoadExtension{Num: bpf.ExtType},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: packetOutgoing, SkipTrue: 7},
		// The group bit of the source MAC: set only in forged or looped
		// frames, never in a guest's own.
		bpf.LoadAbsolute{Off: 6, Size: 1},
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 1, SkipTrue: 5},
		bpf.LoadAbsolute{Off: 6, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 0, SkipTrue: 2},
		bpf.LoadAbsolute{Off: 10, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0, SkipTrue: 1},
		bpf.RetConstant{Val: snapLen},
		bpf.RetConstant{Val: 0},
	}
}
