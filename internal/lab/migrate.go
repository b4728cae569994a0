package lab

import (
	"context"
	"fmt"
	"time"
)

// Migration times a silent-VM migration while the client pings the guest.
type Migration struct {
	Interval time.Duration // ping interval, 10 ms in the targets
	Before   time.Duration // pinging before the migration starts
	After    time.Duration // pinging after the guest resumed
	Pause    time.Duration // source paused → destination resumed
	// OnPlugged runs after the destination vif is plugged, before resume.
	OnPlugged func() error
	// OnResumed runs right after the guest resumed on host B: the one-shot
	// agent is started here; the daemon needs nothing.
	OnResumed func() error
}

// DefaultMigration is what `make lab` runs.
func DefaultMigration() Migration {
	return Migration{Interval: 10 * time.Millisecond, Before: 500 * time.Millisecond, After: 2500 * time.Millisecond, Pause: 20 * time.Millisecond}
}

// Migrate moves the VM from host A to host B and reports what the client saw.
func (l *Lab) Migrate(ctx context.Context, name string, m Migration) (Report, error) {
	count := int((m.Before + m.Pause + m.After) / m.Interval)
	p, err := l.StartPing(m.Interval, count)
	if err != nil {
		return Report{}, err
	}
	fail := func(err error) (Report, error) {
		p.cmd.Process.Kill()
		p.Wait(ctx)
		return Report{}, err
	}
	time.Sleep(m.Before)
	if err := l.PlugDestination(); err != nil {
		return fail(fmt.Errorf("plug destination: %w", err))
	}
	if m.OnPlugged != nil {
		if err := m.OnPlugged(); err != nil {
			return fail(err)
		}
	}
	time.Sleep(m.Pause)
	if err := l.Resume(); err != nil {
		return fail(fmt.Errorf("resume: %w", err))
	}
	if m.OnResumed != nil {
		if err := m.OnResumed(); err != nil {
			return fail(err)
		}
	}
	res, err := p.Wait(ctx)
	if err != nil {
		return Report{}, err
	}
	hb, _ := l.FDBPort(l.HostB, l.BridgeName(), GuestMAC)
	return Report{Scenario: name, Result: res, SwitchPort: l.SwitchPort(), HostBPort: hb}, nil
}

// Healed lists what is still wrong after a migration with an agent: the
// client's pings did not come back before pinging stopped, they were lost
// in more than the one outage the move itself causes, or the switch or host
// B's bridge still sends the guest's traffic elsewhere. Empty means the
// network followed the VM. How many pings that one outage cost is timing: it
// is reported (make lab, make bench), not judged here, because the pause the
// lab simulates alone spans two 10 ms pings and a loaded machine stretches it.
func (l *Lab) Healed(rep Report) []string {
	var bad []string
	if rep.Ongoing {
		bad = append(bad, fmt.Sprintf("client lost %d pings (missed seqs %v) and the guest was still unreachable when pinging stopped", rep.Lost, rep.Missed))
	} else if runs := Runs(rep.Missed); runs > 1 {
		bad = append(bad, fmt.Sprintf("client lost pings in %d separate runs (missed seqs %v), want one outage at the move", runs, rep.Missed))
	}
	return append(bad, l.FDBFollowed()...)
}

// FDBFollowed lists the forwarding tables that still send the guest's MAC
// somewhere other than host B's vif: the switch's and host B's bridge.
func (l *Lab) FDBFollowed() []string {
	var bad []string
	if p, _ := l.FDBPort(l.Switch, "sw", GuestMAC); p != "pB" && (p != "pB2" || l.opts.OVSBond == "" && l.opts.Bond == "") {
		bad = append(bad, fmt.Sprintf("switch FDB: guest MAC on %q, want pB (host B's port)", p))
	}
	if p, _ := l.FDBPort(l.HostB, l.BridgeName(), GuestMAC); p != DstVif {
		bad = append(bad, fmt.Sprintf("host B bridge FDB: guest MAC on %q, want %s", p, DstVif))
	}
	return bad
}

// Runs counts the runs of consecutive sequence numbers in missed, which is
// sorted: [4 5 6 9] is two.
func Runs(missed []int) int {
	n := 0
	for i, s := range missed {
		if i == 0 || s != missed[i-1]+1 {
			n++
		}
	}
	return n
}
