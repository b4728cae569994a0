package schedule

import (
	"reflect"
	"testing"
	"time"
)

func ms(v ...int) []time.Duration {
	out := make([]time.Duration, len(v))
	for i, x := range v {
		out[i] = time.Duration(x) * time.Millisecond
	}
	return out
}

func TestOffsets(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    Schedule
		want []time.Duration
	}{
		// Measured from real QEMU: frames at 0, 50, 200, 450, 800 ms.
		{"qemu default", Default(), ms(0, 50, 200, 450, 800)},
		{"capped at max", Schedule{Initial: 50 * time.Millisecond, Step: 300 * time.Millisecond, Max: 400 * time.Millisecond, Rounds: 4}, ms(0, 50, 400, 800)},
		{"one round", Schedule{Initial: time.Millisecond, Max: time.Millisecond, Rounds: 1}, ms(0)},
		{"no step", Schedule{Initial: 10 * time.Millisecond, Max: time.Second, Rounds: 3}, ms(0, 10, 20)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.s.Validate(); err != nil {
				t.Fatal(err)
			}
			got := tc.s.Offsets()
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Offsets() = %v, want %v", got, tc.want)
			}
			for i, w := range tc.want {
				if o := tc.s.Offset(i); o != w {
					t.Fatalf("Offset(%d) = %v, want %v", i, o, w)
				}
			}
			if d := tc.s.Duration(); d != tc.want[len(tc.want)-1] {
				t.Fatalf("Duration() = %v", d)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	bad := []Schedule{
		{Initial: 50 * time.Millisecond, Max: time.Second, Rounds: 0},
		{Initial: 0, Max: time.Second, Rounds: 5},
		{Initial: time.Millisecond, Max: 0, Rounds: 5},
		{Initial: time.Millisecond, Step: -1, Max: time.Second, Rounds: 5},
		{Initial: time.Millisecond, Max: time.Second, Rounds: 100000},
	}
	for _, s := range bad {
		if s.Validate() == nil {
			t.Errorf("Validate(%+v) = nil, want error", s)
		}
	}
}
