package daemon

import (
	"context"
	"errors"
	"testing"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/linuxbr"
	"github.com/selfannounce/selfannounce/announce/netwatch"
	"github.com/selfannounce/selfannounce/announce/plan"
)

// tablePlanner is the real Linux planner over only the link table the
// daemon hands it: no sysfs, no netlink. Its sender writes to the wire by
// the uplink names the table gives.
type tablePlanner struct {
	w *wire
}

func (tp *tablePlanner) Plan(string, announce.Guest) (*plan.Plan, error) {
	return nil, errors.New("planned without the daemon's link table")
}

func (tp *tablePlanner) PlanLinks(links []linuxbr.TableLink, port string, g announce.Guest) (*plan.Plan, error) {
	names := map[int]string{}
	for _, l := range links {
		names[l.Index] = l.Name
	}
	lp := plan.Linux{Host: &linuxbr.TableHost{Links: links}, Sender: tableSender{tp.w, names}}
	pl, err := lp.Plan(port, g)
	if err != nil {
		return nil, err
	}
	// The FDB repair acts on the kernel, which this test has none of.
	pl.Repair = func(context.Context) (bool, error) { return false, nil }
	return pl, nil
}

type tableSender struct {
	w     *wire
	names map[int]string
}

func (s tableSender) Send(ifindex int, b []byte) error { s.w.record(s.names[ifindex], b); return nil }
func (s tableSender) Close() error                     { return nil }

// The path follows the daemon's own view of the links: an uplink swapped
// on the bridge between two arrivals is used from the next one on.
func TestPathFromLinkTable(t *testing.T) {
	h := newHarness(t, nil)
	h.dm.d.Linux = &tablePlanner{w: h.wire}
	eth1 := netwatch.Link{Index: 3, Name: "eth1", AdminUp: true, OperUp: true, STP: netwatch.STPUnknown}
	a, b := ready(10, "vif5.0"), ready(11, "vif6.0")
	h.guest("vif5.0", macA)
	h.guest("vif6.0", macB)
	h.start(down(a), down(b), eth1)

	// RARPs (one per burst and uplink) by uplink.
	vias := func(mac string) map[string]int {
		n := map[string]int{}
		for _, f := range h.wire.all() {
			if f.src == mac && f.kind == "rarp" {
				n[f.via]++
			}
		}
		return n
	}
	h.link(a)
	if v := vias(macA); len(v) != 1 || v["eth0"] != 1 {
		t.Fatalf("first guest's RARPs went out via %v, want one via eth0", v)
	}

	left := eth0
	left.Master = 0
	joined := eth1
	joined.Master, joined.STP = 1, netwatch.STPForwarding
	h.link(left)
	h.link(joined)
	h.link(b)
	if v := vias(macB); len(v) != 1 || v["eth1"] != 1 {
		t.Fatalf("second guest's RARPs went out via %v, want one via eth1", v)
	}
}
