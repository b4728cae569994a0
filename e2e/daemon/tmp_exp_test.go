//go:build linux

package daemon_test

import (
	"context"
	"testing"
	"time"
	"sort"
	"fmt"

	"github.com/selfannounce/selfannounce/internal/lab"
)

func TestTmpTrace(t *testing.T) {
	bin := requireE2E(t)
	l := newLab(t, lab.Options{})
	caps := map[string]*capture{
		"pA-out": startEgressCapture(t, l.Switch, "pA"),
		"pB-out": startEgressCapture(t, l.Switch, "pB"),
		"pB-in":  startCapture(t, l.Switch, "pB"),
		"pC-in":  startCapture(t, l.Switch, "pC"),
		"pC-out":  startEgressCapture(t, l.Switch, "pC"),
	}
	startDaemon(t, bin, l.HostB, writeConfig(t, labConfig("")))
	var resumeAt, resumedAt time.Time
	m := lab.DefaultMigration()
	m.OnPlugged = func() error { return nil }
	m.OnResumed = func() error { resumedAt = time.Now(); return nil }
	go func() {}()
	t0 := time.Now()
	rep, err := l.Migrate(context.Background(), "daemon", m)
	if err != nil {
		t.Fatal(err)
	}
	_ = resumeAt
	t.Logf("%v missed %v", rep, rep.Missed)
	type ev struct{ at time.Time; s string }
	var evs []ev
	for name, c := range caps {
		for _, f := range c.all(nil) {
			if f.Kind == kindOther { continue }
			if f.Kind == kindEchoRequest || f.Kind == kindEchoReply {
				ok := false
				for _, m := range rep.Missed { if f.Seq >= m-2 && f.Seq <= m+2 { ok = true } }
				if !ok { continue }
			}
			evs = append(evs, ev{f.At, fmt.Sprintf("%s %s seq=%d", name, f.Kind, f.Seq)})
		}
	}
	evs = append(evs, ev{resumedAt, "RESUME RETURNED"})
	sort.Slice(evs, func(i, j int) bool { return evs[i].at.Before(evs[j].at) })
	for _, e := range evs {
		if e.s[len(e.s)-1] == 'x' { continue }
		t.Logf("%v %s", e.at.Sub(t0), e.s)
	}
}
