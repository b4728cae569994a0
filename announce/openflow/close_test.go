package openflow

import (
	"testing"
	"time"
)

// Close writes what PacketOut already queued before it ends the session: a
// one-shot closes its pool right after the burst's last frame, and that
// frame must still reach the switch (seen in CI: 9 of 10 frames on the
// trunk, the last gratuitous ARP lost).
func TestCloseWritesQueuedPacketOuts(t *testing.T) {
	c, b := openPipe(t)
	defer b.Close()
	b.SetDeadline(time.Now().Add(10 * time.Second))

	const n = 50
	for i := 0; i < n; i++ {
		if err := c.PacketOut(2, Action{}, frame14); err != nil {
			t.Fatalf("packet-out %d: %v", i, err)
		}
	}
	got := make(chan int, 1)
	go func() {
		k := 0
		for {
			m, err := readMsg(b)
			if err != nil {
				got <- k
				return
			}
			if m[1] == typePacketOut {
				k++
			}
		}
	}()
	c.Close()
	b.Close()
	if k := <-got; k != n {
		t.Fatalf("the switch read %d packet-outs, want the %d queued before Close", k, n)
	}
}
