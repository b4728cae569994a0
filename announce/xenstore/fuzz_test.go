package xenstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"sync"
	"testing"
	"time"
)

// replyConn plays xenstored: it records the client's requests and, once
// released, answers with a fixed byte stream and then end of file.
type replyConn struct {
	writes  chan []byte
	start   chan struct{}
	closed  chan struct{}
	once    sync.Once
	replies *bytes.Reader
}

func (c *replyConn) Write(b []byte) (int, error) {
	c.writes <- append([]byte(nil), b...)
	return len(b), nil
}

func (c *replyConn) Read(p []byte) (int, error) {
	select {
	case <-c.start:
	case <-c.closed:
		return 0, io.ErrClosedPipe
	}
	return c.replies.Read(p)
}

func (c *replyConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

// wireMsg is one xenstore message as xenstored sends it.
func wireMsg(typ, id uint32, payload string) []byte {
	b := make([]byte, headerLen, headerLen+len(payload))
	binary.NativeEndian.PutUint32(b[0:], typ)
	binary.NativeEndian.PutUint32(b[4:], id)
	binary.NativeEndian.PutUint32(b[12:], uint32(len(payload)))
	return append(b, payload...)
}

// FuzzReplies runs a WATCH (request id 1), a READ (2) and a DIRECTORY (3)
// against an arbitrary reply stream from xenstored, which is another
// process (or, through /dev/xen/xenbus, another domain). Whatever the
// stream holds, every call returns once it ends, nothing panics, and the
// client fails cleanly rather than hanging. The committed seeds are the
// byte streams of tools/xenstored's reply shapes (see xenstoretest).
func FuzzReplies(f *testing.F) {
	const watchPath, token = "/local/domain/0/backend/vif", "tok"
	good := bytes.Join([][]byte{
		wireMsg(typeWatch, 1, "OK\x00"),
		wireMsg(typeWatchEvent, 0, watchPath+"\x00"+token+"\x00"),
		wireMsg(typeRead, 2, "52:54:00:12:34:56"),
		wireMsg(typeWatchEvent, 0, watchPath+"/1/0/mac\x00"+token+"\x00"),
		wireMsg(typeDirectory, 3, "0\x001\x00"),
	}, nil)
	f.Add(good)
	f.Add(bytes.Join([][]byte{
		wireMsg(typeError, 3, "ENOENT\x00"),
		wireMsg(typeError, 2, "EACCES\x00"),
		wireMsg(typeWatch, 1, "OK\x00"),
	}, nil))
	f.Add(good[:len(good)-3])
	f.Add(wireMsg(typeRead, 2, string(make([]byte, PayloadMax+1))))
	f.Fuzz(func(t *testing.T, stream []byte) {
		conn := &replyConn{
			writes:  make(chan []byte, 8),
			start:   make(chan struct{}),
			closed:  make(chan struct{}),
			replies: bytes.NewReader(stream),
		}
		c := NewClient(conn)
		ctx := context.Background()
		var wg sync.WaitGroup
		wg.Add(3)
		go func() {
			defer wg.Done()
			ch, unwatch, err := c.Watch(ctx, watchPath, token)
			if err != nil {
				return
			}
			for range ch {
			}
			unwatch()
		}()
		<-conn.writes
		go func() {
			defer wg.Done()
			c.Read(ctx, watchPath+"/1/0/mac")
		}()
		<-conn.writes
		go func() {
			defer wg.Done()
			names, err := c.Directory(ctx, "/local/domain/1/attr/vif/0/ipv4")
			for _, n := range names {
				if err != nil || n == "" {
					t.Errorf("Directory returned %q with error %v", names, err)
				}
			}
		}()
		<-conn.writes
		close(conn.start)
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("requests still waiting 10 s after the stream ended")
		}
		c.Close()
	})
}
