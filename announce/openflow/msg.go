// Package openflow speaks just enough OpenFlow to an Open vSwitch bridge's
// management socket to inject frames with OFPT_PACKET_OUT: version
// negotiation, echo, packet-out, barrier and error reports, for OpenFlow 1.0
// and 1.3. The messages are hand-written because no maintained Go OpenFlow
// library is available; layouts follow the OpenFlow 1.0.0 and 1.3.x
// specifications and OVS's nicira-ext.h.
package openflow

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Protocol versions on the wire.
const (
	Version10 uint8 = 0x01
	Version13 uint8 = 0x04
)

// supported lists the versions we speak, highest first.
var supported = []uint8{Version13, Version10}

// Message types shared by 1.0 and 1.3.
const (
	typeHello       uint8 = 0
	typeError       uint8 = 1
	typeEchoRequest uint8 = 2
	typeEchoReply   uint8 = 3
	typePacketOut   uint8 = 13
)

// Barrier types moved between 1.0 and 1.3.
func barrierTypes(version uint8) (req, reply uint8) {
	if version == Version10 {
		return 18, 19
	}
	return 20, 21
}

const (
	headerLen = 8
	maxMsgLen = 0xffff

	noBuffer = 0xffffffff

	// OFPP_NORMAL in each version's port numbering.
	portNormal10 = 0xfffa
	portNormal13 = 0xfffffffa
	// OFPP_MAX in 1.0: higher numbers are reserved ports.
	portMax10 = 0xff00
	// OFPP_MAX in 1.3.
	portMax13 = 0xffffff00
	// OFPP_IN_PORT in 1.0 numbering, which Nicira actions use in every
	// version: "resubmit with the packet's own in_port".
	portInPort10 = 0xfff8

	actionOutput = 0
	// OFPAT_VENDOR (1.0) and OFPAT_EXPERIMENTER (1.3) share the value.
	actionVendor = 0xffff
	nxVendorID   = 0x00002320
	// NXAST_RESUBMIT_TABLE.
	nxastResubmitTable = 14

	helloElemVersionBitmap = 1
	errHelloFailed         = 0
	errHelloIncompatible   = 0
)

// Action is what the switch does with an injected frame. The zero value is
// output:NORMAL, the switch's ordinary L2 pipeline; Resubmit runs the frame
// through flow table Table instead (NXAST_RESUBMIT_TABLE), for bridges whose
// flows a controller owns, such as OVN's br-int.
type Action struct {
	Resubmit bool
	Table    uint8
}

func (a Action) String() string {
	if a.Resubmit {
		return fmt.Sprintf("resubmit(,%d)", a.Table)
	}
	return "NORMAL"
}

type header struct {
	Version uint8
	Type    uint8
	Length  uint16
	Xid     uint32
}

func putHeader(b []byte, version, typ uint8, xid uint32) {
	b[0] = version
	b[1] = typ
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	binary.BigEndian.PutUint32(b[4:], xid)
}

func parseHeader(b []byte) (header, error) {
	if len(b) < headerLen {
		return header{}, errors.New("openflow: short header")
	}
	h := header{b[0], b[1], binary.BigEndian.Uint16(b[2:]), binary.BigEndian.Uint32(b[4:])}
	if h.Length < headerLen {
		return h, fmt.Errorf("openflow: message length %d shorter than its header", h.Length)
	}
	return h, nil
}

// encodeHello builds an OFPT_HELLO for our highest version carrying a
// version bitmap element, so a 1.3+ peer can pick any version we list while
// a 1.0 peer ignores the element and falls back to the header version.
func encodeHello(xid uint32, versions []uint8) []byte {
	var bitmap uint32
	high := uint8(0)
	for _, v := range versions {
		bitmap |= 1 << v
		high = max(high, v)
	}
	b := make([]byte, headerLen+8)
	putHeader(b, high, typeHello, xid)
	binary.BigEndian.PutUint16(b[8:], helloElemVersionBitmap)
	binary.BigEndian.PutUint16(b[10:], 8) // element length, excluding padding
	binary.BigEndian.PutUint32(b[12:], bitmap)
	return b
}

// negotiate picks the version for a session from the peer's HELLO: the
// highest common bit of the bitmaps when the peer sent one, otherwise the
// lower of the two header versions, which must then be one we speak.
func negotiate(peer []byte, ours []uint8) (uint8, error) {
	h, err := parseHeader(peer)
	if err != nil {
		return 0, err
	}
	var theirs uint32
	body := peer[headerLen:]
	for len(body) >= 4 {
		typ := binary.BigEndian.Uint16(body)
		n := int(binary.BigEndian.Uint16(body[2:]))
		if n < 4 || n > len(body) {
			return 0, fmt.Errorf("openflow: malformed hello element (length %d)", n)
		}
		if typ == helloElemVersionBitmap && n >= 8 {
			// Only the first word matters: versions above 31 do not exist.
			theirs = binary.BigEndian.Uint32(body[4:])
		}
		pad := (n + 7) / 8 * 8
		if pad > len(body) {
			break
		}
		body = body[pad:]
	}
	if theirs != 0 {
		for _, v := range ours {
			if theirs&(1<<v) != 0 {
				return v, nil
			}
		}
		return 0, fmt.Errorf("openflow: no common version (peer bitmap %#x, ours %v)", theirs, ours)
	}
	high := uint8(0)
	for _, v := range ours {
		high = max(high, v)
	}
	v := min(high, h.Version)
	for _, o := range ours {
		if o == v {
			return v, nil
		}
	}
	return 0, fmt.Errorf("openflow: peer offers version %#x, we speak %v", h.Version, ours)
}

// encodeHelloFailed is the OFPT_ERROR a side sends before closing when
// negotiation fails.
func encodeHelloFailed(version uint8, xid uint32, reason string) []byte {
	b := make([]byte, headerLen+4+len(reason))
	putHeader(b, version, typeError, xid)
	binary.BigEndian.PutUint16(b[8:], errHelloFailed)
	binary.BigEndian.PutUint16(b[10:], errHelloIncompatible)
	copy(b[12:], reason)
	return b
}

func encodeEchoReply(req []byte) []byte {
	b := make([]byte, len(req))
	copy(b, req)
	b[1] = typeEchoReply
	return b
}

func encodeBarrier(version uint8, xid uint32) []byte {
	req, _ := barrierTypes(version)
	b := make([]byte, headerLen)
	putHeader(b, version, req, xid)
	return b
}

func actionLen(a Action, version uint8) int {
	if a.Resubmit || version != Version10 {
		return 16
	}
	return 8
}

func putAction(b []byte, a Action, version uint8) {
	if a.Resubmit {
		// struct nx_action_resubmit: type, len, vendor, subtype, in_port,
		// table, pad[3]; the same bytes in 1.0 and 1.3.
		binary.BigEndian.PutUint16(b[0:], actionVendor)
		binary.BigEndian.PutUint16(b[2:], 16)
		binary.BigEndian.PutUint32(b[4:], nxVendorID)
		binary.BigEndian.PutUint16(b[8:], nxastResubmitTable)
		binary.BigEndian.PutUint16(b[10:], portInPort10)
		b[12] = a.Table
		return
	}
	if version == Version10 {
		// struct ofp_action_output (1.0): type, len, port u16, max_len.
		binary.BigEndian.PutUint16(b[0:], actionOutput)
		binary.BigEndian.PutUint16(b[2:], 8)
		binary.BigEndian.PutUint16(b[4:], portNormal10)
		return
	}
	// struct ofp_action_output (1.3): type, len, port u32, max_len, pad[6].
	binary.BigEndian.PutUint16(b[0:], actionOutput)
	binary.BigEndian.PutUint16(b[2:], 16)
	binary.BigEndian.PutUint32(b[4:], portNormal13)
}

// encodePacketOut builds OFPT_PACKET_OUT carrying frame itself (buffer_id =
// NO_BUFFER) with the given in_port and a single action.
func encodePacketOut(version uint8, xid uint32, inPort uint32, a Action, frame []byte) ([]byte, error) {
	if inPort == 0 {
		return nil, errors.New("openflow: in_port 0 is not a port (the interface has no ofport yet)")
	}
	var fixed int
	switch version {
	case Version10:
		if inPort >= portMax10 {
			return nil, fmt.Errorf("openflow: in_port %d does not fit OpenFlow 1.0 port numbers", inPort)
		}
		fixed = headerLen + 8
	case Version13:
		if inPort >= portMax13 {
			return nil, fmt.Errorf("openflow: in_port %d is a reserved port number", inPort)
		}
		fixed = headerLen + 16
	default:
		return nil, fmt.Errorf("openflow: unsupported version %#x", version)
	}
	if len(frame) < 14 {
		return nil, fmt.Errorf("openflow: frame of %d bytes is shorter than an Ethernet header", len(frame))
	}
	alen := actionLen(a, version)
	total := fixed + alen + len(frame)
	if total > maxMsgLen {
		return nil, fmt.Errorf("openflow: frame of %d bytes does not fit a packet-out", len(frame))
	}
	b := make([]byte, total)
	putHeader(b, version, typePacketOut, xid)
	binary.BigEndian.PutUint32(b[8:], noBuffer)
	if version == Version10 {
		// buffer_id, in_port u16, actions_len u16.
		binary.BigEndian.PutUint16(b[12:], uint16(inPort))
		binary.BigEndian.PutUint16(b[14:], uint16(alen))
	} else {
		// buffer_id, in_port u32, actions_len u16, pad[6].
		binary.BigEndian.PutUint32(b[12:], inPort)
		binary.BigEndian.PutUint16(b[16:], uint16(alen))
	}
	putAction(b[fixed:], a, version)
	copy(b[fixed+alen:], frame)
	return b, nil
}

// Error is an OFPT_ERROR the switch sent in reply to one of our requests.
type Error struct {
	Version uint8
	Xid     uint32
	Type    uint16
	Code    uint16
	// Data is the start of the offending request (or text for HELLO_FAILED).
	Data []byte
}

func parseError(msg []byte) (*Error, error) {
	h, err := parseHeader(msg)
	if err != nil {
		return nil, err
	}
	if len(msg) < headerLen+4 {
		return nil, errors.New("openflow: short error message")
	}
	return &Error{
		Version: h.Version,
		Xid:     h.Xid,
		Type:    binary.BigEndian.Uint16(msg[8:]),
		Code:    binary.BigEndian.Uint16(msg[10:]),
		Data:    append([]byte(nil), msg[12:]...),
	}, nil
}

var errTypeNames10 = map[uint16]string{
	0: "HELLO_FAILED", 1: "BAD_REQUEST", 2: "BAD_ACTION", 3: "FLOW_MOD_FAILED",
	4: "PORT_MOD_FAILED", 5: "QUEUE_OP_FAILED", 0xb0c2: "NICIRA",
}

var errTypeNames13 = map[uint16]string{
	0: "HELLO_FAILED", 1: "BAD_REQUEST", 2: "BAD_ACTION", 3: "BAD_INSTRUCTION",
	4: "BAD_MATCH", 5: "FLOW_MOD_FAILED", 6: "GROUP_MOD_FAILED", 7: "PORT_MOD_FAILED",
	8: "TABLE_MOD_FAILED", 9: "QUEUE_OP_FAILED", 10: "SWITCH_CONFIG_FAILED",
	11: "ROLE_REQUEST_FAILED", 12: "METER_MOD_FAILED", 13: "TABLE_FEATURES_FAILED",
	0xffff: "EXPERIMENTER",
}

func (e *Error) Error() string {
	names := errTypeNames13
	if e.Version == Version10 {
		names = errTypeNames10
	}
	name := names[e.Type]
	if name == "" {
		name = fmt.Sprintf("type %d", e.Type)
	}
	s := fmt.Sprintf("openflow: switch rejected request (xid %d): %s code %d", e.Xid, name, e.Code)
	if e.Type == errHelloFailed && len(e.Data) > 0 {
		s += ": " + string(e.Data)
	}
	return s
}
