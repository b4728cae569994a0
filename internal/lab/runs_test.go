package lab

import "testing"

func TestRuns(t *testing.T) {
	for _, c := range []struct {
		missed []int
		want   int
	}{
		{nil, 0},
		{[]int{37}, 1},
		{[]int{37, 38}, 1},
		{[]int{4, 5, 6, 9}, 2},
		{[]int{1, 3, 5}, 3},
	} {
		if got := Runs(c.missed); got != c.want {
			t.Errorf("Runs(%v) = %d, want %d", c.missed, got, c.want)
		}
	}
}
