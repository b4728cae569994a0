package xenstore_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/announce/xenstore"
	"github.com/selfannounce/selfannounce/announce/xenstore/xenstoretest"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func littleEndian(t *testing.T) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("hand-written frames below are little-endian; xenstore is host-endian")
	}
}

// rawPeer is the far end of a client's socket, for byte-exact checks of
// what the client writes and how it takes hand-written replies.
func rawPeer(t *testing.T) (*xenstore.Client, net.Conn) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := xenstore.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	return c, peer
}

func expectBytes(t *testing.T, r io.Reader, want []byte) {
	t.Helper()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(r, got); err != nil {
		t.Fatalf("reading %d bytes from client: %v", len(want), err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("client wrote\n% x\nwant\n% x", got, want)
	}
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestClientWireBytes(t *testing.T) {
	littleEndian(t)
	c, peer := rawPeer(t)
	ctx := ctxT(t)

	type res struct {
		v   string
		err error
	}
	done := make(chan res, 1)
	go func() {
		v, err := c.Read(ctx, "/local/domain/0/backend/vif/3/0/mac")
		done <- res{v, err}
	}()
	path := []byte("/local/domain/0/backend/vif/3/0/mac\x00") // 36 bytes
	expectBytes(t, peer, cat(
		[]byte{0x02, 0, 0, 0, 0x01, 0, 0, 0, 0, 0, 0, 0, 0x24, 0, 0, 0}, // READ, req 1, tx 0, len 36
		path))
	// xenstored sends a READ value without a trailing NUL.
	peer.Write(cat([]byte{0x02, 0, 0, 0, 0x01, 0, 0, 0, 0, 0, 0, 0, 0x11, 0, 0, 0}, []byte("00:16:3e:12:34:56")))
	if r := <-done; r.err != nil || r.v != "00:16:3e:12:34:56" {
		t.Fatalf("Read = %q, %v", r.v, r.err)
	}

	go func() {
		_, err := c.Read(ctx, "/nope")
		done <- res{err: err}
	}()
	expectBytes(t, peer, cat([]byte{0x02, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0, 0x06, 0, 0, 0}, []byte("/nope\x00")))
	peer.Write(cat([]byte{0x10, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0, 0x07, 0, 0, 0}, []byte("ENOENT\x00")))
	if r := <-done; !errors.Is(r.err, xenstore.ErrNotExist) {
		t.Fatalf("Read of missing path: err = %v, want ErrNotExist", r.err)
	}

	// WATCH, with the initial event arriving right behind the OK and a
	// second event before the next reply: the reader must route both.
	type wres struct {
		ch  <-chan string
		err error
	}
	wdone := make(chan wres, 1)
	go func() {
		ch, _, err := c.Watch(ctx, "/local/domain/0/backend/vif", "tok")
		wdone <- wres{ch, err}
	}()
	expectBytes(t, peer, cat([]byte{0x04, 0, 0, 0, 0x03, 0, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0},
		[]byte("/local/domain/0/backend/vif\x00tok\x00")))
	peer.Write(cat(
		[]byte{0x04, 0, 0, 0, 0x03, 0, 0, 0, 0, 0, 0, 0, 0x03, 0, 0, 0}, []byte("OK\x00"),
		[]byte{0x0f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0}, []byte("/local/domain/0/backend/vif\x00tok\x00"),
		[]byte{0x0f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x22, 0, 0, 0}, []byte("/local/domain/0/backend/vif/7\x00tok\x00"),
	))
	w := <-wdone
	if w.err != nil {
		t.Fatal(w.err)
	}
	for _, want := range []string{"/local/domain/0/backend/vif", "/local/domain/0/backend/vif/7"} {
		select {
		case got := <-w.ch:
			if got != want {
				t.Fatalf("event %q, want %q", got, want)
			}
		case <-ctx.Done():
			t.Fatalf("no event for %s", want)
		}
	}

	// DIRECTORY reply: NUL-terminated names.
	dd := make(chan []string, 1)
	go func() {
		names, err := c.Directory(ctx, "/local/domain")
		if err != nil {
			t.Error(err)
		}
		dd <- names
	}()
	expectBytes(t, peer, cat([]byte{0x01, 0, 0, 0, 0x04, 0, 0, 0, 0, 0, 0, 0, 0x0e, 0, 0, 0}, []byte("/local/domain\x00")))
	peer.Write(cat([]byte{0x01, 0, 0, 0, 0x04, 0, 0, 0, 0, 0, 0, 0, 0x04, 0, 0, 0}, []byte("0\x007\x00")))
	if got := <-dd; fmt.Sprint(got) != "[0 7]" {
		t.Fatalf("Directory = %q", got)
	}
}

func TestServerWireBytes(t *testing.T) {
	littleEndian(t)
	s := xenstoretest.New(t)
	conn, err := net.Dial("unix", s.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	steps := []struct {
		name      string
		send, get []byte
	}{
		// WRITE's value is not NUL-terminated; the reply is "OK\0".
		{"write", cat([]byte{0x0b, 0, 0, 0, 0x2a, 0, 0, 0, 0, 0, 0, 0, 0x0c, 0, 0, 0}, []byte("/a/b\x00hello!!")),
			cat([]byte{0x0b, 0, 0, 0, 0x2a, 0, 0, 0, 0, 0, 0, 0, 0x03, 0, 0, 0}, []byte("OK\x00"))},
		{"read", cat([]byte{0x02, 0, 0, 0, 0x2b, 0, 0, 0, 0, 0, 0, 0, 0x05, 0, 0, 0}, []byte("/a/b\x00")),
			cat([]byte{0x02, 0, 0, 0, 0x2b, 0, 0, 0, 0, 0, 0, 0, 0x07, 0, 0, 0}, []byte("hello!!"))},
		{"directory", cat([]byte{0x01, 0, 0, 0, 0x2c, 0, 0, 0, 0, 0, 0, 0, 0x03, 0, 0, 0}, []byte("/a\x00")),
			cat([]byte{0x01, 0, 0, 0, 0x2c, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0}, []byte("b\x00"))},
		{"read missing", cat([]byte{0x02, 0, 0, 0, 0x2d, 0, 0, 0, 0, 0, 0, 0, 0x03, 0, 0, 0}, []byte("/x\x00")),
			cat([]byte{0x10, 0, 0, 0, 0x2d, 0, 0, 0, 0, 0, 0, 0, 0x07, 0, 0, 0}, []byte("ENOENT\x00"))},
		{"relative path", cat([]byte{0x02, 0, 0, 0, 0x2e, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0}, []byte("x\x00")),
			cat([]byte{0x10, 0, 0, 0, 0x2e, 0, 0, 0, 0, 0, 0, 0, 0x07, 0, 0, 0}, []byte("EINVAL\x00"))},
		// WATCH: OK, then the initial event with req_id 0.
		{"watch", cat([]byte{0x04, 0, 0, 0, 0x2f, 0, 0, 0, 0, 0, 0, 0, 0x05, 0, 0, 0}, []byte("/a\x00t\x00")),
			cat([]byte{0x04, 0, 0, 0, 0x2f, 0, 0, 0, 0, 0, 0, 0, 0x03, 0, 0, 0}, []byte("OK\x00"),
				[]byte{0x0f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x05, 0, 0, 0}, []byte("/a\x00t\x00"))},
		// A write below the watch fires it before WRITE's own OK.
		{"write fires", cat([]byte{0x0b, 0, 0, 0, 0x30, 0, 0, 0, 0, 0, 0, 0, 0x06, 0, 0, 0}, []byte("/a/c\x00v")),
			cat([]byte{0x0f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x07, 0, 0, 0}, []byte("/a/c\x00t\x00"),
				[]byte{0x0b, 0, 0, 0, 0x30, 0, 0, 0, 0, 0, 0, 0, 0x03, 0, 0, 0}, []byte("OK\x00"))},
		{"unwatch", cat([]byte{0x05, 0, 0, 0, 0x31, 0, 0, 0, 0, 0, 0, 0, 0x05, 0, 0, 0}, []byte("/a\x00t\x00")),
			cat([]byte{0x05, 0, 0, 0, 0x31, 0, 0, 0, 0, 0, 0, 0, 0x03, 0, 0, 0}, []byte("OK\x00"))},
		{"unwatch again", cat([]byte{0x05, 0, 0, 0, 0x32, 0, 0, 0, 0, 0, 0, 0, 0x05, 0, 0, 0}, []byte("/a\x00t\x00")),
			cat([]byte{0x10, 0, 0, 0, 0x32, 0, 0, 0, 0, 0, 0, 0, 0x07, 0, 0, 0}, []byte("ENOENT\x00"))},
		{"rm", cat([]byte{0x0d, 0, 0, 0, 0x33, 0, 0, 0, 0, 0, 0, 0, 0x03, 0, 0, 0}, []byte("/a\x00")),
			cat([]byte{0x0d, 0, 0, 0, 0x33, 0, 0, 0, 0, 0, 0, 0, 0x03, 0, 0, 0}, []byte("OK\x00"))},
		{"read removed", cat([]byte{0x02, 0, 0, 0, 0x34, 0, 0, 0, 0, 0, 0, 0, 0x05, 0, 0, 0}, []byte("/a/b\x00")),
			cat([]byte{0x10, 0, 0, 0, 0x34, 0, 0, 0, 0, 0, 0, 0, 0x07, 0, 0, 0}, []byte("ENOENT\x00"))},
		{"watch", cat([]byte{0x04, 0, 0, 0, 0x35, 0, 0, 0, 0, 0, 0, 0, 0x05, 0, 0, 0}, []byte("/q\x00u\x00")),
			cat([]byte{0x04, 0, 0, 0, 0x35, 0, 0, 0, 0, 0, 0, 0, 0x03, 0, 0, 0}, []byte("OK\x00"),
				[]byte{0x0f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x05, 0, 0, 0}, []byte("/q\x00u\x00"))},
		{"duplicate watch", cat([]byte{0x04, 0, 0, 0, 0x36, 0, 0, 0, 0, 0, 0, 0, 0x05, 0, 0, 0}, []byte("/q\x00u\x00")),
			cat([]byte{0x10, 0, 0, 0, 0x36, 0, 0, 0, 0, 0, 0, 0, 0x07, 0, 0, 0}, []byte("EEXIST\x00"))},
		// RM is fine for a missing node, not for a missing parent.
		{"rm missing parent", cat([]byte{0x0d, 0, 0, 0, 0x37, 0, 0, 0, 0, 0, 0, 0, 0x05, 0, 0, 0}, []byte("/n/m\x00")),
			cat([]byte{0x10, 0, 0, 0, 0x37, 0, 0, 0, 0, 0, 0, 0, 0x07, 0, 0, 0}, []byte("ENOENT\x00"))},
		{"rm missing node", cat([]byte{0x0d, 0, 0, 0, 0x38, 0, 0, 0, 0, 0, 0, 0, 0x03, 0, 0, 0}, []byte("/n\x00")),
			cat([]byte{0x0d, 0, 0, 0, 0x38, 0, 0, 0, 0, 0, 0, 0, 0x03, 0, 0, 0}, []byte("OK\x00"))},
		{"unsupported type", cat([]byte{0x03, 0, 0, 0, 0x39, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0}, []byte("/\x00")),
			cat([]byte{0x10, 0, 0, 0, 0x39, 0, 0, 0, 0, 0, 0, 0, 0x07, 0, 0, 0}, []byte("ENOSYS\x00"))},
		// No transactions: an unknown tx_id is ENOENT, echoed in the reply.
		{"unknown transaction", cat([]byte{0x02, 0, 0, 0, 0x3a, 0, 0, 0, 0x05, 0, 0, 0, 0x02, 0, 0, 0}, []byte("/\x00")),
			cat([]byte{0x10, 0, 0, 0, 0x3a, 0, 0, 0, 0x05, 0, 0, 0, 0x07, 0, 0, 0}, []byte("ENOENT\x00"))},
	}
	for _, st := range steps {
		if _, err := conn.Write(st.send); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(st.get))
		if _, err := io.ReadFull(conn, got); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if !bytes.Equal(got, st.get) {
			t.Fatalf("%s: server sent\n% x\nwant\n% x", st.name, got, st.get)
		}
	}
}

func dialServer(t *testing.T) (*xenstoretest.Server, *xenstore.Client) {
	t.Helper()
	s := xenstoretest.New(t)
	c, err := xenstore.Dial(s.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return s, c
}

func TestReadDirectory(t *testing.T) {
	s, c := dialServer(t)
	ctx := ctxT(t)
	s.Write("/local/domain/0/backend/vif/5/0/mac", "00:16:3e:00:00:05")
	s.Write("/local/domain/0/backend/vif/5/1/mac", "00:16:3e:00:01:05")

	v, err := c.Read(ctx, "/local/domain/0/backend/vif/5/0/mac")
	if err != nil || v != "00:16:3e:00:00:05" {
		t.Fatalf("Read = %q, %v", v, err)
	}
	names, err := c.Directory(ctx, "/local/domain/0/backend/vif/5")
	if err != nil || fmt.Sprint(names) != "[0 1]" {
		t.Fatalf("Directory = %q, %v", names, err)
	}
	if v, err := c.Read(ctx, "/local/domain/0/backend/vif/5"); err != nil || v != "" {
		t.Fatalf("Read of an inner node = %q, %v; want empty value", v, err)
	}
	if _, err := c.Read(ctx, "/local/domain/9"); !errors.Is(err, xenstore.ErrNotExist) {
		t.Fatalf("Read missing: %v", err)
	}
	if _, err := c.Directory(ctx, "/local/domain/9"); !errors.Is(err, xenstore.ErrNotExist) {
		t.Fatalf("Directory missing: %v", err)
	}
	var xe *xenstore.Error
	if _, err := c.Read(ctx, "relative"); !errors.As(err, &xe) || xe.Errno != "EINVAL" {
		t.Fatalf("Read relative path: %v, want EINVAL", err)
	}
	if err := c.Write(ctx, "/data/x", "1 2"); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.Read("/data/x"); v != "1 2" {
		t.Fatalf("server holds %q after Write", v)
	}
	if err := c.Remove(ctx, "/data"); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Read("/data/x"); ok {
		t.Fatal("Remove left /data/x")
	}
}

func next(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case p, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return p
	case <-time.After(5 * time.Second):
		t.Fatal("no watch event")
	}
	return ""
}

func quiet(t *testing.T, ch <-chan string) {
	t.Helper()
	select {
	case p := <-ch:
		t.Fatalf("unexpected event %q", p)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestWatch(t *testing.T) {
	s, c := dialServer(t)
	ctx := ctxT(t)
	s.Write("/local/domain/0/backend/vif/5/0/state", "4")

	ch, unwatch, err := c.Watch(ctx, "/local/domain/0/backend/vif", "vifs")
	if err != nil {
		t.Fatal(err)
	}
	if p := next(t, ch); p != "/local/domain/0/backend/vif" {
		t.Fatalf("initial event %q", p)
	}
	s.Write("/local/domain/0/backend/vif/6/0/mac", "00:16:3e:00:00:06")
	if p := next(t, ch); p != "/local/domain/0/backend/vif/6/0/mac" {
		t.Fatalf("event %q", p)
	}
	s.Write("/local/domain/0/backend/vbd/6/0/x", "y")
	quiet(t, ch)

	// A second watch on a child: one write fires both.
	ch2, unwatch2, err := c.Watch(ctx, "/local/domain/0/backend/vif/6", "six")
	if err != nil {
		t.Fatal(err)
	}
	next(t, ch2)
	s.Write("/local/domain/0/backend/vif/6/0/state", "4")
	if a, b := next(t, ch), next(t, ch2); a != b || a != "/local/domain/0/backend/vif/6/0/state" {
		t.Fatalf("events %q and %q", a, b)
	}
	// Removing a subtree fires watches on it and above it.
	s.Remove("/local/domain/0/backend/vif/6")
	if a, b := next(t, ch), next(t, ch2); a != "/local/domain/0/backend/vif/6" || b != a {
		t.Fatalf("rm events %q and %q", a, b)
	}

	if _, _, err := c.Watch(ctx, "/x", "six"); err == nil {
		t.Fatal("Watch accepted a token already in use")
	}
	if err := unwatch2(); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-ch2; ok {
		t.Fatal("channel open after unwatch")
	}
	if n := s.Watches(); n != 1 {
		t.Fatalf("server holds %d watches after unwatch, want 1", n)
	}
	if err := unwatch2(); err != nil {
		t.Fatalf("second unwatch: %v", err)
	}
	// Requests keep working while events stream in.
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.Write(fmt.Sprintf("/local/domain/0/backend/vif/9/%d", i), "v")
			if _, err := c.Read(ctx, "/local/domain/0/backend/vif/5/0/state"); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for len(seen) < 20 {
		seen[next(t, ch)] = true
	}
	unwatch()
	if s.Watches() != 0 {
		t.Fatal("server still holds a watch")
	}
}

// A reader that stops taking events must not stall replies to requests.
func TestSlowWatcherDoesNotBlockReplies(t *testing.T) {
	s, c := dialServer(t)
	ctx := ctxT(t)
	ch, unwatch, err := c.Watch(ctx, "/d", "d")
	if err != nil {
		t.Fatal(err)
	}
	defer unwatch()
	for i := 0; i < 200; i++ {
		s.Write(fmt.Sprintf("/d/%d", i), "x")
		s.Write(fmt.Sprintf("/d/%d", i), "y") // same path: queued once
	}
	if err := c.Write(ctx, "/e", "1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(ctx, "/e"); err != nil {
		t.Fatal(err)
	}
	n := 0
	for p := range ch {
		n++
		if p == "/d/199" {
			break
		}
	}
	if n != 201 { // "/d" itself, then each distinct path once
		t.Fatalf("got %d events, want 201", n)
	}
}

func TestContextCancelKeepsStreamInStep(t *testing.T) {
	c, peer := rawPeer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	hdr := make([]byte, 16)
	got := make(chan struct{})
	go func() {
		io.ReadFull(peer, hdr)
		io.ReadFull(peer, make([]byte, binary.NativeEndian.Uint32(hdr[12:])))
		close(got)
	}()
	if _, err := c.Read(ctx, "/slow"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline", err)
	}
	<-got
	// The late reply to request 1 arrives, then the answer to request 2.
	reply := func(id uint32, payload string) []byte {
		b := make([]byte, 16+len(payload))
		binary.NativeEndian.PutUint32(b[0:], 2)
		binary.NativeEndian.PutUint32(b[4:], id)
		binary.NativeEndian.PutUint32(b[12:], uint32(len(payload)))
		copy(b[16:], payload)
		return b
	}
	go func() {
		h := make([]byte, 16)
		io.ReadFull(peer, h)
		io.ReadFull(peer, make([]byte, binary.NativeEndian.Uint32(h[12:])))
		peer.Write(reply(binary.NativeEndian.Uint32(hdr[4:]), "late"))
		peer.Write(reply(binary.NativeEndian.Uint32(h[4:]), "fresh"))
	}()
	v, err := c.Read(ctxT(t), "/fast")
	if err != nil || v != "fresh" {
		t.Fatalf("Read after cancelled one = %q, %v", v, err)
	}
}

func TestCloseAndPeerHangup(t *testing.T) {
	s, c := dialServer(t)
	ctx := ctxT(t)
	ch, unwatch, err := c.Watch(ctx, "/w", "w")
	if err != nil {
		t.Fatal(err)
	}
	next(t, ch)
	s.Close() // the server goes away under the client
	if _, ok := <-ch; ok {
		t.Fatal("watch channel still open after hangup")
	}
	if _, err := c.Read(ctx, "/w"); err == nil {
		t.Fatal("Read on a dead connection succeeded")
	}
	if err := unwatch(); err != nil {
		t.Fatalf("unwatch after hangup: %v", err)
	}
	c.Close()
	if _, err := c.Read(ctx, "/w"); err == nil {
		t.Fatal("Read after Close succeeded")
	}
}

func TestRequestLimits(t *testing.T) {
	_, c := dialServer(t)
	ctx := ctxT(t)
	long := "/" + string(bytes.Repeat([]byte("a"), xenstore.PayloadMax))
	if _, err := c.Read(ctx, long); err == nil {
		t.Fatal("oversized request sent")
	}
	if _, err := c.Read(ctx, "/a\x00b"); err == nil {
		t.Fatal("path with NUL accepted")
	}
	// The connection survived both refusals.
	if _, err := c.Read(ctx, "/"); err != nil {
		t.Fatal(err)
	}
}

func TestDial(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o600)
	if _, err := xenstore.Dial(f); err == nil {
		t.Fatal("Dial accepted a regular file")
	}
	// A character device is opened as a file; /dev/null answers EOF, which
	// must surface as an error, not a hang.
	c, err := xenstore.Dial("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Read(ctxT(t), "/x"); err == nil {
		t.Fatal("Read over /dev/null succeeded")
	}
	_, e1 := os.Stat(xenstore.DefaultSocket)
	_, e2 := os.Stat(xenstore.DefaultDevice)
	if e1 != nil && e2 != nil {
		if _, err := xenstore.DialDefault(); err == nil || !bytes.Contains([]byte(err.Error()), []byte("neither")) {
			t.Fatalf("DialDefault without xenstore: %v", err)
		}
	}
}
