package netwatch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/jsimonetti/rtnetlink/v2"
)

// Kernel ABI numbers, spelled out so the decoding builds and is tested on
// any OS.
const (
	afBridge = 7 // AF_BRIDGE

	rtmNewLink = 16
	rtmDelLink = 17
	rtmGetLink = 18

	iffUp      = 0x1
	iffLowerUp = 0x10000

	iflaAddress   = 1
	iflaIfname    = 3
	iflaMaster    = 10
	iflaProtinfo  = 12
	iflaOperstate = 16
	iflaLinkinfo  = 18
	iflaExtMask   = 29

	iflaInfoKind      = 1
	iflaInfoSlaveKind = 4
	iflaInfoSlaveData = 5

	iflaBrportState = 1

	rtextFilterSkipStats = 1 << 3

	ifOperUnknown = uint8(rtnetlink.OperStateUnknown)
	ifOperUp      = uint8(rtnetlink.OperStateUp)

	sizeofIfinfomsg = 16

	// Attribute type bits that are flags (NLA_F_NESTED, NLA_F_NET_BYTEORDER).
	nlaTypeMask = 0x3fff
)

var errShortLinkMsg = errors.New("netwatch: link message shorter than ifinfomsg")

// linkMsg is one RTM_NEWLINK/RTM_DELLINK reduced to what Link needs. Byte
// slices alias the receive buffer; apply copies them only when they change,
// so a message that changes nothing costs no allocation for them.
type linkMsg struct {
	family  uint8
	deleted bool
	index   int
	flags   uint32

	name, mac, kind []byte // nil when absent

	master    uint32
	hasMaster bool
	oper      uint8
	hasOper   bool
	stp       STPState
	hasSTP    bool

	slaveKind []byte
}

// decode parses an RTM_NEWLINK or RTM_DELLINK payload. Neither
// rtnetlink.LinkMessage nor netlink.AttributeDecoder fits a path that sees
// every link message on the host: both copy each attribute (statistics
// included) into fresh allocations, and rtnetlink does not know AF_BRIDGE's
// IFLA_PROTINFO. The walk below reads only the attributes used, in place.
func (m *linkMsg) decode(typ uint16, b []byte) error {
	*m = linkMsg{}
	if len(b) < sizeofIfinfomsg {
		return errShortLinkMsg
	}
	m.family = b[0]
	m.deleted = typ == rtmDelLink
	m.index = int(int32(binary.NativeEndian.Uint32(b[4:8])))
	m.flags = binary.NativeEndian.Uint32(b[8:12])
	it := attrs{b: b[sizeofIfinfomsg:]}
	for it.next() {
		switch it.typ {
		case iflaIfname:
			m.name = cstring(it.data)
		case iflaAddress:
			m.mac = it.data
		case iflaMaster:
			m.master, m.hasMaster = it.u32()
		case iflaOperstate:
			m.oper, m.hasOper = it.u8()
		case iflaLinkinfo:
			m.decodeLinkinfo(it.data)
		case iflaProtinfo:
			// Only AF_BRIDGE messages nest bridge-port attributes here.
			if m.family == afBridge {
				m.decodeBrport(it.data)
			}
		}
	}
	if it.err != nil {
		return fmt.Errorf("netwatch: link %d: %w", m.index, it.err)
	}
	if m.slaveKind != nil && string(m.slaveKind) != "bridge" {
		// Bond and other slave data reuse attribute numbers.
		m.hasSTP = false
	}
	return nil
}

func (m *linkMsg) decodeLinkinfo(b []byte) {
	it := attrs{b: b}
	for it.next() {
		switch it.typ {
		case iflaInfoKind:
			m.kind = cstring(it.data)
		case iflaInfoSlaveKind:
			m.slaveKind = cstring(it.data)
		case iflaInfoSlaveData:
			m.decodeBrport(it.data)
		}
	}
}

// decodeBrport reads IFLA_BRPORT_* attributes: nested in IFLA_PROTINFO in
// AF_BRIDGE messages, in IFLA_INFO_SLAVE_DATA in AF_UNSPEC ones.
func (m *linkMsg) decodeBrport(b []byte) {
	it := attrs{b: b}
	for it.next() {
		if it.typ == iflaBrportState {
			var s uint8
			s, m.hasSTP = it.u8()
			m.stp = STPState(s)
		}
	}
}

var errBadAttr = errors.New("malformed netlink attribute")

// attrs walks netlink attributes without copying them.
type attrs struct {
	b    []byte
	typ  uint16
	data []byte
	err  error
}

func (a *attrs) next() bool {
	if len(a.b) < 4 {
		if len(a.b) != 0 {
			a.err = errBadAttr
		}
		return false
	}
	l := int(binary.NativeEndian.Uint16(a.b[0:2]))
	if l < 4 || l > len(a.b) {
		a.err = errBadAttr
		return false
	}
	a.typ = binary.NativeEndian.Uint16(a.b[2:4]) & nlaTypeMask
	a.data = a.b[4:l]
	l = min((l+3)&^3, len(a.b))
	a.b = a.b[l:]
	return true
}

func (a *attrs) u8() (uint8, bool) {
	if len(a.data) != 1 {
		return 0, false
	}
	return a.data[0], true
}

func (a *attrs) u32() (uint32, bool) {
	if len(a.data) != 4 {
		return 0, false
	}
	return binary.NativeEndian.Uint32(a.data), true
}

func cstring(b []byte) []byte { return bytes.TrimRight(b, "\x00") }
