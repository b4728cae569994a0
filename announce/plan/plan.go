// Package plan turns "announce guest G behind port P" into the frames and
// writers of one round, plus the bridge repair that must precede them. The
// one-shot and the daemon share it, so both send exactly the same thing.
package plan

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/burst"
	"github.com/selfannounce/selfannounce/announce/frame"
	"github.com/selfannounce/selfannounce/announce/linuxbr"
	"github.com/selfannounce/selfannounce/announce/schedule"
	"github.com/selfannounce/selfannounce/announce/send"
)

// Plan is everything needed to announce one guest behind one port.
type Plan struct {
	Port    string
	Backend string // "linux-bridge" or "ovs"
	Bridge  string
	VLAN    uint16
	Guest   announce.Guest
	Outputs []Output // where frames leave, with the tag each needs
	// Unused are uplinks left out because they cannot forward now, each
	// with why ("STP blocking", "no carrier"), for the dry-run and logs.
	Unused  []string
	Packets []burst.Packet
	// Omitted, when set, says what the plan leaves unannounced and why.
	Omitted string
	// Repair fixes the host's own forwarding table before the first frame;
	// nil when the backend needs none (OVS learns from the packet-out).
	Repair func(ctx context.Context) (changed bool, err error)
}

// Output describes one way out, for the dry-run and logs.
type Output struct {
	Via  string // uplink device, or "ofport N" on OVS
	VLAN uint16
}

// Linux plans announcements on Linux-bridge hosts.
type Linux struct {
	Host    linuxbr.Host
	Sender  send.Sender
	VMPorts []string
	// RepairFDB repairs the bridge's forwarding database; nil means
	// linuxbr.RepairFDB (a socket per repair; a daemon passes a
	// linuxbr.FDB's Repair to keep one).
	RepairFDB func(ctx context.Context, p *linuxbr.Path, mac net.HardwareAddr) (bool, error)
}

// Plan resolves the path out of port's bridge and builds one round per
// uplink, each with the 802.1Q tag that uplink needs.
func (l *Linux) Plan(port string, g announce.Guest) (*Plan, error) {
	p, err := linuxbr.Resolve(l.Host, port, l.VMPorts)
	if err != nil {
		return nil, err
	}
	return l.FromPath(p, g)
}

// FromPath builds the plan for an already resolved path.
func (l *Linux) FromPath(p *linuxbr.Path, g announce.Guest) (*Plan, error) {
	pl := &Plan{Port: p.Port.Name, Backend: "linux-bridge", Bridge: p.Bridge.Name, VLAN: p.VLAN, Guest: g}
	for _, u := range p.Unusable {
		pl.Unused = append(pl.Unused, u.Name+": "+u.Why)
	}
	perUplink := make([][]frame.Frame, len(p.Uplinks))
	for i, u := range p.Uplinks {
		fs, err := frame.Round(g, u.VLAN)
		if err != nil {
			return nil, err
		}
		perUplink[i] = fs
		pl.Outputs = append(pl.Outputs, Output{Via: u.Name, VLAN: u.VLAN})
	}
	// Kind-major order: every uplink gets the RARP before anyone gets a
	// GARP, as each round is "RARP, then GARPs, then NAs".
	if len(perUplink) > 0 {
		for j := range perUplink[0] {
			for i, u := range p.Uplinks {
				f := perUplink[i][j]
				pl.Packets = append(pl.Packets, burst.Packet{
					W:    ifWriter{l.Sender, u.Index, u.Name},
					Kind: f.Kind.String(),
					Data: f.Data,
				})
			}
		}
	}
	// A trunk VM port's tagged VLANs: the MAC alone (RARP), since an
	// address cannot be tied to a VLAN, tagged as each uplink needs.
	for _, tv := range p.Tagged {
		for _, u := range tv.Uplinks {
			fs, err := frame.Round(announce.Guest{MAC: g.MAC, Source: g.Source}, u.VLAN)
			if err != nil {
				return nil, err
			}
			pl.Outputs = append(pl.Outputs, Output{Via: u.Name, VLAN: u.VLAN})
			for _, f := range fs {
				pl.Packets = append(pl.Packets, burst.Packet{W: ifWriter{l.Sender, u.Index, u.Name}, Kind: f.Kind.String(), Data: f.Data})
			}
		}
	}
	if p.TaggedOmitted > 0 {
		pl.Omitted = fmt.Sprintf("%d more tagged VLANs of %s beyond the first %d", p.TaggedOmitted, p.Port.Name, linuxbr.MaxTaggedVLANs)
	}
	path := p
	mac := g.MAC
	repair := l.RepairFDB
	if repair == nil {
		repair = linuxbr.RepairFDB
	}
	pl.Repair = func(ctx context.Context) (bool, error) { return repair(ctx, path, mac) }
	return pl, nil
}

type ifWriter struct {
	s     send.Sender
	index int
	name  string
}

func (w ifWriter) WriteFrame(b []byte) error { return w.s.Send(w.index, b) }
func (w ifWriter) Describe() string          { return w.name }

// Describe prints the plan for --dry-run: the path, then each frame with its
// send time.
func (pl *Plan) Describe(w io.Writer, s schedule.Schedule) {
	fmt.Fprintf(w, "port %s  backend %s  bridge %s  vlan %s\n", pl.Port, pl.Backend, pl.Bridge, vlanStr(pl.VLAN))
	fmt.Fprintf(w, "guest %s  (from %s)\n", pl.Guest.String(), pl.Guest.Source)
	for _, o := range pl.Outputs {
		fmt.Fprintf(w, "uplink %s  tag %s\n", o.Via, vlanStr(o.VLAN))
	}
	for _, u := range pl.Unused {
		fmt.Fprintf(w, "uplink %s  not used\n", u)
	}
	if pl.Omitted != "" {
		fmt.Fprintf(w, "not announced: %s\n", pl.Omitted)
	}
	if pl.Repair != nil {
		fmt.Fprintf(w, "repair bridge %s: fdb %s -> %s (dynamic)\n", pl.Bridge, pl.Guest.MAC, pl.Port)
	}
	for r, off := range s.Offsets() {
		for _, p := range pl.Packets {
			fmt.Fprintf(w, "%8s  round %d  %-4s  %s  %d bytes  %s\n", fmtMS(off), r+1, p.Kind, via(p), len(p.Data), hexShort(p.Data))
		}
	}
}

func via(p burst.Packet) string {
	if d, ok := p.W.(interface{ Describe() string }); ok {
		return d.Describe()
	}
	return "?"
}

func fmtMS(d time.Duration) string { return fmt.Sprintf("+%dms", d.Milliseconds()) }

func vlanStr(v uint16) string {
	if v == 0 {
		return "none"
	}
	return fmt.Sprint(v)
}

func hexShort(b []byte) string {
	var sb strings.Builder
	for i, c := range b {
		if i == 24 {
			sb.WriteString("…")
			break
		}
		fmt.Fprintf(&sb, "%02x", c)
	}
	return sb.String()
}
