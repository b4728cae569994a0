package sniff

import "golang.org/x/net/bpf"

// snapLen bounds what the kernel copies per frame: an NA with a handful of
// options fits, and announcements are never large.
const snapLen = 1024

// filter passes only frames Decode may accept, so the sniffer costs nearly
// nothing on a busy host: RARP in both EtherTypes, ARP whose sender and
// target IPs are equal and non-zero, and ICMPv6 neighbour advertisements
// without the Solicited flag. A frame may reach it with its VLAN tag still
// in the data (frames sent from this host) or already moved into metadata by
// the kernel (received frames), so X holds the in-data tag's length and
// every later load is relative to it. Skips count instructions after the
// jump; the numbers in comments are instruction indexes.
var filterProgram = []bpf.Instruction{
	/* 0 */ bpf.LoadConstant{Dst: bpf.RegX, Val: 0},
	/* 1 */ bpf.LoadAbsolute{Off: 12, Size: 2},
	/* 2 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: tpid8021Q, SkipTrue: 1}, // -> 4
	/* 3 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: tpid8021AD, SkipFalse: 2}, // -> 6
	/* 4 */ bpf.LoadConstant{Dst: bpf.RegX, Val: 4},
	/* 5 */ bpf.LoadIndirect{Off: 12, Size: 2},
	// A = EtherType, X = in-data tag length.
	/* 6 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: etherTypeRARP, SkipTrue: 16}, // -> 23
	/* 7 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: etherTypeRARPLegacy, SkipTrue: 15}, // -> 23
	/* 8 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: etherTypeARP, SkipTrue: 7}, // -> 16
	/* 9 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: etherTypeIPv6, SkipFalse: 12}, // -> 22
	// IPv6 without extension headers carrying ICMPv6 type 136, Solicited clear.
	/* 10 */ bpf.LoadIndirect{Off: ethHeaderLen + 6, Size: 1},
	/* 11 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: 58, SkipFalse: 10}, // -> 22
	/* 12 */ bpf.LoadIndirect{Off: ethHeaderLen + ipv6HeaderLen, Size: 1},
	/* 13 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: icmpv6NA, SkipFalse: 8}, // -> 22
	/* 14 */ bpf.LoadIndirect{Off: ethHeaderLen + ipv6HeaderLen + 4, Size: 1},
	/* 15 */ bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: naFlagSolicited, SkipTrue: 6, SkipFalse: 7}, // -> 22, 23
	// ARP: sender IP == target IP != 0.
	/* 16 */ bpf.LoadIndirect{Off: ethHeaderLen + 14, Size: 4},
	/* 17 */ bpf.StoreScratch{Src: bpf.RegA, N: 0},
	/* 18 */ bpf.LoadIndirect{Off: ethHeaderLen + 24, Size: 4},
	/* 19 */ bpf.LoadScratch{Dst: bpf.RegX, N: 0},
	/* 20 */ bpf.JumpIfX{Cond: bpf.JumpEqual, SkipFalse: 1}, // -> 22
	/* 21 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0, SkipFalse: 1}, // -> 22, 23
	/* 22 */ bpf.RetConstant{Val: 0},
	/* 23 */ bpf.RetConstant{Val: snapLen},
}

var filter = mustAssemble(filterProgram)

func mustAssemble(insts []bpf.Instruction) []bpf.RawInstruction {
	raw, err := bpf.Assemble(insts)
	if err != nil {
		panic(err)
	}
	return raw
}
