// Package xenstore is a small client for the xenstore wire protocol
// (xen/include/public/io/xs_wire.h), spoken over xenstored's unix socket or
// the /dev/xen/xenbus character device. It needs no cgo and no libxenstore,
// so the agent builds and runs the same on every dom0.
//
// Every message is a 16-byte header of four host-endian uint32 (type,
// request id, transaction id, payload length) and a payload of at most 4096
// bytes. Replies echo the request id; watch events arrive unsolicited and
// interleaved with replies, so one reader goroutine demultiplexes them.
package xenstore

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

// Default locations: xenstored's socket in dom0, and the kernel's xenbus
// device, the only way in when xenstored runs in a stub domain.
const (
	DefaultSocket = "/var/run/xenstored/socket"
	DefaultDevice = "/dev/xen/xenbus"
)

// Message types from xs_wire.h's enum xsd_sockmsg_type.
const (
	typeDirectory  = 1
	typeRead       = 2
	typeWatch      = 4
	typeUnwatch    = 5
	typeWrite      = 11
	typeRm         = 13
	typeWatchEvent = 15
	typeError      = 16
)

const (
	headerLen = 16
	// PayloadMax is XENSTORE_PAYLOAD_MAX: xenstored kills a connection
	// that sends more, so requests are checked before they leave.
	PayloadMax = 4096
)

var typeNames = map[uint32]string{
	typeDirectory: "DIRECTORY", typeRead: "READ", typeWatch: "WATCH",
	typeUnwatch: "UNWATCH", typeWrite: "WRITE", typeRm: "RM",
}

// ErrNotExist is matched (errors.Is) by the error for a path that does not
// exist (xenstored's ENOENT).
var ErrNotExist = errors.New("no such xenstore path")

// ErrClosed is returned for requests on a closed client.
var ErrClosed = errors.New("xenstore client closed")

// Error is an ERROR reply from xenstored: Errno is the errno name it sent.
type Error struct {
	Op    string
	Path  string
	Errno string
}

func (e *Error) Error() string {
	return fmt.Sprintf("xenstore %s %s: %s", e.Op, e.Path, e.Errno)
}

// Is makes errors.Is(err, ErrNotExist) true for ENOENT.
func (e *Error) Is(target error) bool {
	return target == ErrNotExist && e.Errno == "ENOENT"
}

type reply struct {
	typ     uint32
	payload []byte
	err     error
}

// Client is a connection to xenstore. Its methods are safe for concurrent
// use.
type Client struct {
	rw io.ReadWriteCloser

	writeMu sync.Mutex

	mu       sync.Mutex
	nextID   uint32
	pending  map[uint32]chan reply
	watchers map[string]*watcher // by token
	err      error               // set once the connection is unusable

	readerDone chan struct{}
}

// Dial connects to xenstore at path: a unix socket (xenstored's) or a
// character device (the kernel's xenbus device, which takes the same
// framing).
func Dial(path string) (*Client, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("xenstore: %w", err)
	}
	var rw io.ReadWriteCloser
	switch m := fi.Mode(); {
	case m&os.ModeSocket != 0:
		conn, err := net.Dial("unix", path)
		if err != nil {
			return nil, fmt.Errorf("xenstore: %w", err)
		}
		rw = conn
	case m&os.ModeCharDevice != 0:
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("xenstore: %w", err)
		}
		rw = f
	default:
		return nil, fmt.Errorf("xenstore: %s is neither a unix socket nor a character device", path)
	}
	return newClient(rw), nil
}

// DialDefault connects to xenstored's socket, or failing that the xenbus
// device.
func DialDefault() (*Client, error) {
	c, err1 := Dial(DefaultSocket)
	if err1 == nil {
		return c, nil
	}
	c, err2 := Dial(DefaultDevice)
	if err2 == nil {
		return c, nil
	}
	return nil, fmt.Errorf("xenstore: neither %s nor %s is reachable (%v; %v)",
		DefaultSocket, DefaultDevice, err1, err2)
}

// NewClient runs the protocol over an already open connection; Close closes
// it.
func NewClient(rw io.ReadWriteCloser) *Client { return newClient(rw) }

func newClient(rw io.ReadWriteCloser) *Client {
	c := &Client{
		rw:         rw,
		pending:    make(map[uint32]chan reply),
		watchers:   make(map[string]*watcher),
		readerDone: make(chan struct{}),
	}
	go c.readLoop()
	return c
}

// Close closes the connection, fails requests in flight and closes every
// watch channel.
func (c *Client) Close() error {
	c.mu.Lock()
	already := c.err != nil
	if !already {
		c.err = ErrClosed
	}
	c.mu.Unlock()
	err := c.rw.Close()
	<-c.readerDone
	if already {
		return nil
	}
	return err
}

func (c *Client) readLoop() {
	defer close(c.readerDone)
	br := bufio.NewReaderSize(c.rw, headerLen+PayloadMax)
	var hdr [headerLen]byte
	var err error
	for {
		if _, err = io.ReadFull(br, hdr[:]); err != nil {
			break
		}
		typ := binary.NativeEndian.Uint32(hdr[0:])
		id := binary.NativeEndian.Uint32(hdr[4:])
		n := binary.NativeEndian.Uint32(hdr[12:])
		if n > PayloadMax {
			err = fmt.Errorf("xenstore: message of %d bytes exceeds the protocol's %d", n, PayloadMax)
			break
		}
		payload := make([]byte, n)
		if _, err = io.ReadFull(br, payload); err != nil {
			break
		}
		if typ == typeWatchEvent {
			c.dispatchEvent(payload)
			continue
		}
		c.mu.Lock()
		ch := c.pending[id]
		delete(c.pending, id)
		c.mu.Unlock()
		// A reply nobody waits for belongs to a request whose context was
		// cancelled; dropping it keeps the stream in step.
		if ch != nil {
			ch <- reply{typ: typ, payload: payload}
		}
	}
	c.fail(err)
}

// fail makes the client unusable: the connection broke or was closed.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			err = fmt.Errorf("xenstore: connection closed by peer")
		} else if !strings.HasPrefix(err.Error(), "xenstore:") {
			err = fmt.Errorf("xenstore: %w", err)
		}
		c.err = err
	}
	err = c.err
	pending := c.pending
	c.pending = make(map[uint32]chan reply)
	watchers := c.watchers
	c.watchers = make(map[string]*watcher)
	c.mu.Unlock()
	for _, ch := range pending {
		ch <- reply{err: err}
	}
	for _, w := range watchers {
		w.stop()
	}
}

func (c *Client) dispatchEvent(payload []byte) {
	// "path\0token\0"; tolerate a missing final NUL.
	parts := strings.SplitN(strings.TrimSuffix(string(payload), "\x00"), "\x00", 2)
	if len(parts) != 2 {
		return
	}
	c.mu.Lock()
	w := c.watchers[parts[1]]
	c.mu.Unlock()
	if w != nil {
		w.push(parts[0])
	}
}

func checkPath(path string) error {
	if path == "" || strings.IndexByte(path, 0) >= 0 {
		return fmt.Errorf("xenstore: invalid path %q", path)
	}
	return nil
}

// request sends one message and waits for its reply. An ERROR reply becomes
// an *Error.
func (c *Client) request(ctx context.Context, typ uint32, path string, payload []byte) ([]byte, error) {
	if len(payload) > PayloadMax {
		return nil, fmt.Errorf("xenstore %s %s: request of %d bytes exceeds the protocol's %d",
			typeNames[typ], path, len(payload), PayloadMax)
	}
	ch := make(chan reply, 1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	c.nextID++
	if c.nextID == 0 { // 0 is what watch events carry
		c.nextID++
	}
	id := c.nextID
	c.pending[id] = ch
	c.mu.Unlock()

	msg := make([]byte, headerLen+len(payload))
	binary.NativeEndian.PutUint32(msg[0:], typ)
	binary.NativeEndian.PutUint32(msg[4:], id)
	binary.NativeEndian.PutUint32(msg[8:], 0)
	binary.NativeEndian.PutUint32(msg[12:], uint32(len(payload)))
	copy(msg[headerLen:], payload)

	// One write per message: the xenbus device expects whole messages and
	// a socket must not interleave two writers' bytes.
	c.writeMu.Lock()
	_, err := c.rw.Write(msg)
	c.writeMu.Unlock()
	if err != nil {
		c.forget(id)
		c.rw.Close() // a partial write desynchronises the stream
		return nil, fmt.Errorf("xenstore %s %s: %w", typeNames[typ], path, err)
	}

	select {
	case r := <-ch:
		if r.err != nil {
			return nil, r.err
		}
		switch r.typ {
		case typ:
			return r.payload, nil
		case typeError:
			return nil, &Error{Op: typeNames[typ], Path: path, Errno: strings.TrimRight(string(r.payload), "\x00")}
		default:
			return nil, fmt.Errorf("xenstore %s %s: reply of unexpected type %d", typeNames[typ], path, r.typ)
		}
	case <-ctx.Done():
		c.forget(id)
		return nil, ctx.Err()
	}
}

func (c *Client) forget(id uint32) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

func cstrings(ss ...string) []byte {
	var b []byte
	for _, s := range ss {
		b = append(b, s...)
		b = append(b, 0)
	}
	return b
}

// Read returns the value at path; errors.Is(err, ErrNotExist) when there is
// none.
func (c *Client) Read(ctx context.Context, path string) (string, error) {
	if err := checkPath(path); err != nil {
		return "", err
	}
	v, err := c.request(ctx, typeRead, path, cstrings(path))
	if err != nil {
		return "", err
	}
	// xenstored sends the value without a NUL; some servers add one.
	return strings.TrimSuffix(string(v), "\x00"), nil
}

// Directory returns the names of path's immediate children.
func (c *Client) Directory(ctx context.Context, path string) ([]string, error) {
	if err := checkPath(path); err != nil {
		return nil, err
	}
	v, err := c.request(ctx, typeDirectory, path, cstrings(path))
	if err != nil {
		return nil, err
	}
	var names []string
	for _, s := range strings.Split(string(v), "\x00") {
		if s != "" {
			names = append(names, s)
		}
	}
	return names, nil
}

// Write sets path to value, creating missing parents. The agent itself only
// reads; Write exists for tools and tests.
func (c *Client) Write(ctx context.Context, path, value string) error {
	if err := checkPath(path); err != nil {
		return err
	}
	_, err := c.request(ctx, typeWrite, path, append(cstrings(path), value...))
	return err
}

// Remove deletes path and everything below it.
func (c *Client) Remove(ctx context.Context, path string) error {
	if err := checkPath(path); err != nil {
		return err
	}
	_, err := c.request(ctx, typeRm, path, cstrings(path))
	return err
}

// Watch asks xenstored to report changes at or below path. The channel
// receives the changed paths, starting with path itself (xenstored fires
// every new watch once). It is closed by unwatch, Close, or the connection
// failing. token must be unique among this client's watches. Events a slow
// reader has not taken yet are kept, each distinct path once, so a burst
// never blocks replies to other requests.
func (c *Client) Watch(ctx context.Context, path, token string) (<-chan string, func() error, error) {
	if err := checkPath(path); err != nil {
		return nil, nil, err
	}
	if token == "" || strings.IndexByte(token, 0) >= 0 {
		return nil, nil, fmt.Errorf("xenstore: invalid watch token %q", token)
	}
	w := newWatcher()
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, nil, err
	}
	if _, dup := c.watchers[token]; dup {
		c.mu.Unlock()
		return nil, nil, fmt.Errorf("xenstore: watch token %q already in use", token)
	}
	// Registered before the request: the initial event may be read before
	// this goroutine sees the reply.
	c.watchers[token] = w
	c.mu.Unlock()

	if _, err := c.request(ctx, typeWatch, path, cstrings(path, token)); err != nil {
		c.dropWatcher(token, w)
		return nil, nil, err
	}
	var once sync.Once
	var uerr error
	unwatch := func() error {
		once.Do(func() {
			if !c.dropWatcher(token, w) {
				return // the client is closed; xenstored forgot the watch
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, uerr = c.request(ctx, typeUnwatch, path, cstrings(path, token))
			if errors.Is(uerr, ErrClosed) {
				uerr = nil
			}
		})
		return uerr
	}
	return w.out, unwatch, nil
}

// dropWatcher unregisters w and closes its channel; false if the client
// had already done so.
func (c *Client) dropWatcher(token string, w *watcher) bool {
	c.mu.Lock()
	cur, ok := c.watchers[token]
	if ok && cur == w {
		delete(c.watchers, token)
	}
	c.mu.Unlock()
	if ok && cur == w {
		w.stop()
		return true
	}
	return false
}

// watcher queues a watch's events for its reader without ever blocking the
// connection's reader goroutine.
type watcher struct {
	out      chan string
	wake     chan struct{}
	done     chan struct{}
	stopOnce sync.Once

	mu     sync.Mutex
	queue  []string
	queued map[string]bool
}

func newWatcher() *watcher {
	w := &watcher{
		out:    make(chan string),
		wake:   make(chan struct{}, 1),
		done:   make(chan struct{}),
		queued: make(map[string]bool),
	}
	go w.deliver()
	return w
}

func (w *watcher) push(path string) {
	w.mu.Lock()
	if !w.queued[path] {
		w.queued[path] = true
		w.queue = append(w.queue, path)
	}
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *watcher) stop() { w.stopOnce.Do(func() { close(w.done) }) }

func (w *watcher) deliver() {
	defer close(w.out)
	for {
		w.mu.Lock()
		var next string
		have := len(w.queue) > 0
		if have {
			next = w.queue[0]
			w.queue = w.queue[1:]
			delete(w.queued, next)
		}
		w.mu.Unlock()
		if !have {
			select {
			case <-w.wake:
				continue
			case <-w.done:
				return
			}
		}
		select {
		case w.out <- next:
		case <-w.done:
			return
		}
	}
}
