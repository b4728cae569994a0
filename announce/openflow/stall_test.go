package openflow

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

// openPipe completes a 1.0 handshake with a fake switch on a synchronous
// pipe and returns the session and the switch's end.
func openPipe(t *testing.T) (*Conn, net.Conn) {
	t.Helper()
	a, b := net.Pipe()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	type result struct {
		c   *Conn
		err error
	}
	dialed := make(chan result, 1)
	go func() {
		c, err := handshake(ctx, a)
		dialed <- result{c, err}
	}()
	b.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := b.Write(unhex(t, "01 00 0008 00000063")); err != nil {
		t.Fatal(err)
	}
	if _, err := readMsg(b); err != nil {
		t.Fatal(err)
	}
	bar, err := readMsg(b)
	if err != nil {
		t.Fatal(err)
	}
	bar[1] = 19
	b.Write(bar)
	r := <-dialed
	if r.err != nil {
		t.Fatal(r.err)
	}
	b.SetDeadline(time.Time{})
	return r.c, b
}

// A switch that stops reading (ovs-vswitchd under SIGSTOP, or busy
// restarting) never makes a caller wait: packet-outs queue, and once the
// queue is full they fail at once with ErrBacklog. The pipe is
// synchronous, so any write on the caller's goroutine would block here.
func TestPacketOutNeverWaitsOnTheSwitch(t *testing.T) {
	c, sw := openPipe(t)
	defer sw.Close()
	defer c.Close()
	type outcome struct{ ok, backlog, other int }
	res := make(chan outcome, 1)
	go func() {
		var o outcome
		for range queueLen + 10 {
			switch err := c.PacketOut(2, Action{}, frame14); {
			case err == nil:
				o.ok++
			case errors.Is(err, ErrBacklog):
				o.backlog++
			default:
				o.other++
			}
		}
		res <- o
	}()
	var o outcome
	select {
	case o = <-res:
	case <-time.After(30 * time.Second):
		t.Fatal("PacketOut blocked on a switch that does not read")
	}
	// One message may sit in the writer's blocked Write, the rest queued.
	if o.other != 0 || o.backlog < 9 || o.ok < queueLen {
		t.Fatalf("packet-outs: %d queued, %d refused as backlog, %d other errors; want %d+ queued, the rest backlog", o.ok, o.backlog, o.other, queueLen)
	}
	// The switch reads again: the queued frames reach it in order.
	sw.SetDeadline(time.Now().Add(5 * time.Second))
	for i := range o.ok {
		m, err := readMsg(sw)
		if err != nil || m[1] != typePacketOut {
			t.Fatalf("queued message %d: %x %v", i, m, err)
		}
	}
}
