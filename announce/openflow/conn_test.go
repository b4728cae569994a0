package openflow

import (
	"bytes"
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

// peer plays a minimal OpenFlow 1.0 switch on the other end of a pipe.
func TestConnEchoAndError(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
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
	// A plain 1.0 HELLO without a bitmap.
	if _, err := b.Write(unhex(t, "01 00 0008 00000063")); err != nil {
		t.Fatal(err)
	}
	hello, err := readMsg(b)
	if err != nil || hello[1] != typeHello {
		t.Fatalf("hello: %x %v", hello, err)
	}
	// Dial confirms the session with a 1.0 barrier (type 18).
	bar, err := readMsg(b)
	if err != nil || bar[0] != Version10 || bar[1] != 18 {
		t.Fatalf("barrier: %x %v", bar, err)
	}
	bar[1] = 19
	b.Write(bar)
	r := <-dialed
	if r.err != nil {
		t.Fatal(r.err)
	}
	c := r.c
	defer c.Close()
	if c.Version() != Version10 {
		t.Fatalf("version %#x", c.Version())
	}

	// The connection answers echo requests on its own.
	b.Write(unhex(t, "01 02 000c 00000077 cafef00d"))
	echo, err := readMsg(b)
	if want := unhex(t, "01 03 000c 00000077 cafef00d"); err != nil || !bytes.Equal(echo, want) {
		t.Fatalf("echo reply %x %v, want %x", echo, err, want)
	}

	// The switch rejects a packet-out: PacketOutSync returns that error.
	errc := make(chan error, 1)
	go func() { errc <- c.PacketOutSync(ctx, 2, Action{}, frame14) }()
	po, _ := readMsg(b)
	bar, _ = readMsg(b)
	if po[1] != typePacketOut || bar[1] != 18 {
		t.Fatalf("got types %d, %d", po[1], bar[1])
	}
	errMsg := append(unhex(t, "01 01 0000 00000000 0002 0004"), po[:16]...)
	copy(errMsg[4:8], po[4:8])
	errMsg[3] = byte(len(errMsg))
	b.Write(errMsg)
	bar[1] = 19
	b.Write(bar)
	var oerr *Error
	if err := <-errc; !errors.As(err, &oerr) || oerr.Type != 2 || oerr.Code != 4 {
		t.Fatalf("PacketOutSync: %v", err)
	}

	// The peer going away ends the session.
	b.Close()
	select {
	case <-c.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("session outlived its peer")
	}
	if err := c.PacketOut(2, Action{}, frame14); !errors.Is(err, ErrClosed) {
		t.Fatalf("PacketOut after close: %v", err)
	}
}
