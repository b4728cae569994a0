package openflow

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"testing"
	"time"
)

// ofMsg is one OpenFlow message with a correct header.
func ofMsg(version, typ uint8, xid uint32, body []byte) []byte {
	b := make([]byte, headerLen+len(body))
	copy(b[headerLen:], body)
	putHeader(b, version, typ, xid)
	return b
}

// FuzzSession plays the switch: whatever it sends after our HELLO, the
// handshake and the reader must end (with a session or an error) once the
// stream ends, without panicking or hanging. The committed seeds in
// testdata/fuzz/FuzzSession are what a real ovs-vswitchd sent on its
// bridge management socket (HELLO, BARRIER_REPLY, ECHO_REQUEST, ERROR),
// recorded here; the ones below are the shapes OpenFlow 1.0 peers send.
func FuzzSession(f *testing.F) {
	barrierReply13 := ofMsg(Version13, 21, 2, nil)
	f.Add(append(encodeHello(1, supported), barrierReply13...))
	f.Add(append(ofMsg(Version10, typeHello, 7, nil), ofMsg(Version10, 19, 2, nil)...))
	f.Add(append(append(encodeHello(1, supported), ofMsg(Version13, typeEchoRequest, 9, []byte("ping"))...), barrierReply13...))
	f.Add(encodeHelloFailed(Version13, 1, "no common version"))
	errBody := make([]byte, 4+headerLen)
	binary.BigEndian.PutUint16(errBody[0:], 1) // BAD_REQUEST
	f.Add(append(append(encodeHello(1, supported), ofMsg(Version13, typeError, 3, errBody)...), barrierReply13...))
	f.Fuzz(func(t *testing.T, stream []byte) {
		cli, sw := net.Pipe()
		// Our HELLO and the handshake's barrier request.
		const requests = headerLen + 8 + headerLen
		barrier := make(chan struct{})
		got := make(chan struct{})
		go func() {
			defer close(got)
			b := make([]byte, 512)
			n := 0
			for {
				k, err := sw.Read(b)
				if n < requests && n+k >= requests {
					close(barrier)
				}
				n += k
				if err != nil {
					return
				}
			}
		}()
		// The first message is the peer's HELLO. When it negotiates, the
		// rest follows the barrier request, so that a barrier reply in it
		// meets a waiting barrier as it would from a real switch.
		first, rest := stream, []byte(nil)
		hello, err := readMsg(bytes.NewReader(stream))
		negotiable := err == nil && hello[1] == typeHello
		if negotiable {
			_, err := negotiate(hello, supported)
			negotiable = err == nil
			first, rest = stream[:len(hello)], stream[len(hello):]
		}
		handshook := make(chan struct{})
		go func() {
			sw.Write(first)
			if negotiable {
				select {
				case <-handshook:
				case <-barrier:
				}
			}
			sw.Write(rest)
			sw.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := handshake(ctx, cli)
		close(handshook)
		if ctx.Err() != nil {
			t.Fatalf("handshake still running after 10 s: %v", err)
		}
		if err == nil {
			c.PacketOut(1, Action{}, make([]byte, 60))
			select {
			case <-c.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("session outlived its stream by 10 s")
			}
			c.Close()
		}
		cli.Close()
		<-got
	})
}
