// Package schedule reproduces QEMU's self-announce timer (net/announce.c), so
// the network sees our bursts with the same spacing it sees QEMU's.
package schedule

import (
	"fmt"
	"time"
)

// Schedule holds QEMU's four announce parameters.
type Schedule struct {
	Initial time.Duration `yaml:"initial"`
	Step    time.Duration `yaml:"step"`
	Max     time.Duration `yaml:"max"`
	Rounds  int           `yaml:"rounds"`
}

// Default is QEMU's default: frames at 0, 50, 200, 450 and 800 ms.
func Default() Schedule {
	return Schedule{Initial: 50 * time.Millisecond, Step: 100 * time.Millisecond, Max: 550 * time.Millisecond, Rounds: 5}
}

// QEMU bounds the parameters the same way in qmp_announce_self; a burst that
// lasts minutes would keep stealing a MAC after the VM had moved on.
const (
	maxRounds   = 1000
	maxDuration = 100 * time.Second
)

// Validate rejects parameters QEMU would reject or that make no burst.
func (s Schedule) Validate() error {
	switch {
	case s.Rounds < 1 || s.Rounds > maxRounds:
		return fmt.Errorf("schedule: rounds %d out of range 1..%d", s.Rounds, maxRounds)
	case s.Initial <= 0 || s.Initial > maxDuration:
		return fmt.Errorf("schedule: initial %v out of range (0, %v]", s.Initial, maxDuration)
	case s.Max <= 0 || s.Max > maxDuration:
		return fmt.Errorf("schedule: max %v out of range (0, %v]", s.Max, maxDuration)
	case s.Step < 0 || s.Step > maxDuration:
		return fmt.Errorf("schedule: step %v out of range [0, %v]", s.Step, maxDuration)
	}
	return nil
}

// Delay is the wait after the round that leaves `left` rounds still to send,
// as qemu_announce_next_step computes it: initial + (rounds - left - 1) * step,
// capped at max.
func (s Schedule) Delay(left int) time.Duration {
	d := s.Initial + time.Duration(s.Rounds-left-1)*s.Step
	if d > s.Max {
		d = s.Max
	}
	return d
}

// Offsets are the send times of every round relative to the first.
func (s Schedule) Offsets() []time.Duration {
	out := make([]time.Duration, 0, s.Rounds)
	var t time.Duration
	for left := s.Rounds; left > 0; left-- {
		out = append(out, t)
		t += s.Delay(left - 1)
	}
	return out
}

// Offset is the send time of round i (0-based) relative to the first.
func (s Schedule) Offset(i int) time.Duration {
	var t time.Duration
	for r := 0; r < i; r++ {
		t += s.Delay(s.Rounds - r - 1)
	}
	return t
}

// Duration is the time from the first to the last round.
func (s Schedule) Duration() time.Duration { return s.Offset(s.Rounds - 1) }
