package doctor

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"time"
)

// EtherTypeSlow is IEEE 802.3 Slow Protocols, which carries LACP.
const EtherTypeSlow = 0x8809

// SlowProtocolsMAC is the destination of every LACPDU.
var SlowProtocolsMAC = net.HardwareAddr{0x01, 0x80, 0xc2, 0x00, 0x00, 0x02}

// LACPDU is what the doctor reports about a captured LACPDU: who sent it.
type LACPDU struct {
	Source      net.HardwareAddr // the switch port's MAC
	ActorSystem net.HardwareAddr // the switch's LACP system id
	ActorKey    uint16           // the switch's aggregation key (its LAG)
	ActorPort   uint16
}

func (d LACPDU) String() string {
	return fmt.Sprintf("from %s: system %s, key %d, port %d", d.Source, d.ActorSystem, d.ActorKey, d.ActorPort)
}

// ParseLACPDU reports whether frame (starting at the Ethernet header) is an
// LACPDU, and decodes the actor information (IEEE 802.1AX, 6.4.2).
// Marker PDUs share the ethertype but are not LACP; a switch sends them
// only on an aggregation that is already running LACP, so LACPDUs suffice.
func ParseLACPDU(frame []byte) (LACPDU, bool) {
	const (
		subtypeLACP = 0x01
		tlvActor    = 0x01
		actorLen    = 0x14
	)
	// header 14, subtype, version, actor TLV type/length, 18 bytes of actor info
	if len(frame) < 14+4+18 {
		return LACPDU{}, false
	}
	if !bytes.Equal(frame[0:6], SlowProtocolsMAC) ||
		binary.BigEndian.Uint16(frame[12:14]) != EtherTypeSlow ||
		frame[14] != subtypeLACP || frame[16] != tlvActor || frame[17] != actorLen {
		return LACPDU{}, false
	}
	a := frame[18:]
	return LACPDU{
		Source:      net.HardwareAddr(bytes.Clone(frame[6:12])),
		ActorSystem: net.HardwareAddr(bytes.Clone(a[2:8])),
		ActorKey:    binary.BigEndian.Uint16(a[8:10]),
		ActorPort:   binary.BigEndian.Uint16(a[12:14]),
	}, true
}

// LACPListener captures LACPDUs arriving on interfaces.
type LACPListener interface {
	// Listen watches every named interface for d (or until ctx ends) and
	// returns the LACPDUs seen on each. An interface it cannot watch is
	// reported in the error; the others' results are still returned.
	Listen(ctx context.Context, ifaces []string, d time.Duration) (map[string][]LACPDU, error)
}

func (c *checker) lacpMismatch(ctx context.Context) ([]Finding, error) {
	members := c.nonLACPMembers()
	if len(members) == 0 {
		return nil, nil
	}
	names := sortedKeys(members)
	seen, err := c.o.Listener.Listen(ctx, names, c.o.ListenTime)
	var out []Finding
	for _, m := range names {
		pdus := seen[m]
		if len(pdus) == 0 {
			continue
		}
		bond := members[m]
		keys := map[string]bool{}
		var who []string
		for _, p := range pdus {
			if s := p.String(); !keys[s] {
				keys[s] = true
				who = append(who, s)
			}
		}
		out = append(out, Finding{
			ID: CheckLACPMismatch, Object: bond.Name + "/" + m, Severity: Error,
			Breaks: fmt.Sprintf("the switch runs LACP on the port facing %s, but %s is a %s bond that never answers: depending on the switch the port is suspended, or the LAG hashes traffic for VMs onto members the bond drops or moves MACs across, so migrated guests lose traffic and announcements land on the wrong member", m, bond.Name, bond.Bond.Mode),
			Fix:    fmt.Sprintf("make both sides agree: remove the switch ports of %s from their LAG/LACP group (for active-backup or XenServer SLB bonds), or change %s to mode 802.3ad (XenServer: xe bond-set-mode mode=lacp)", bond.Name, bond.Name),
			Detail: fmt.Sprintf("%d LACPDU(s) in %s on %s (%s mode %s): %s", len(pdus), c.o.ListenTime, m, bond.Name, bond.Bond.Mode, strings.Join(who, "; ")),
		})
	}
	return out, err
}
