package burst_test

import (
	"sync"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/announce/burst"
	"github.com/selfannounce/selfannounce/announce/schedule"
)

type discard struct{}

func (discard) WriteFrame([]byte) error { return nil }

// oneRound is a schedule whose burst ends after its first round, so a
// benchmark measures scheduling, not QEMU's 800 ms of waiting.
var oneRound = schedule.Schedule{Initial: 50 * time.Millisecond, Step: 100 * time.Millisecond, Max: 550 * time.Millisecond, Rounds: 1}

// benchArrivals starts n bursts at once (the 200-VM arrival) and waits for
// every first round: the engine's cost per arrival, writes excluded.
func benchArrivals(b *testing.B, n int) {
	e := burst.New(1000000, nil)
	defer e.Close()
	frame := make([]byte, 60)
	pkts := []burst.Packet{{W: discard{}, Kind: "rarp", Data: frame}, {W: discard{}, Kind: "garp", Data: frame}}
	keys := make([]string, n)
	for i := range keys {
		keys[i] = string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676))
	}
	var wg sync.WaitGroup
	done := func(burst.Result) { wg.Done() }
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		wg.Add(n)
		for _, k := range keys {
			if err := e.Start(&burst.Burst{Key: k, Packets: pkts, Schedule: oneRound, Done: done}); err != nil {
				b.Fatal(err)
			}
		}
		wg.Wait()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/burst")
}

func BenchmarkEngineOneArrival(b *testing.B)  { benchArrivals(b, 1) }
func BenchmarkEngine200Arrivals(b *testing.B) { benchArrivals(b, 200) }
