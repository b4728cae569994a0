// Package xenstoretest is a xenstored stand-in for tests: an in-memory tree
// served over a unix socket with the real wire protocol, byte for byte. A
// real xenstored needs the hypervisor and cannot run on a test machine.
//
// It follows tools/xenstored: READ replies carry the bare value (no NUL),
// DIRECTORY replies each child name NUL-terminated, WATCH replies "OK\0"
// and then fires the watch once, WRITE fires the watches on the path and
// its ancestors before its own "OK\0", RM fires them for every removed node,
// and failures are ERROR replies naming the errno ("ENOENT\0"). Transactions
// and permissions are not implemented.
//
// Its codec is deliberately separate from package xenstore's, so the two
// check each other.
package xenstoretest

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
)

// Message types from xs_wire.h.
const (
	xsDirectory  = 1
	xsRead       = 2
	xsWatch      = 4
	xsUnwatch    = 5
	xsWrite      = 11
	xsRm         = 13
	xsWatchEvent = 15
	xsError      = 16
)

const payloadMax = 4096

type node struct {
	value    string
	children map[string]*node
}

func newNode(v string) *node { return &node{value: v, children: map[string]*node{}} }

type watch struct {
	path, token string
}

type conn struct {
	c       net.Conn
	watches []watch

	mu     sync.Mutex
	queue  [][]byte
	wake   chan struct{}
	closed bool
}

// Server is the in-memory xenstored.
type Server struct {
	// Path is the unix socket to Dial.
	Path string

	ln net.Listener
	wg sync.WaitGroup

	mu     sync.Mutex
	root   *node
	conns  map[*conn]bool
	closed bool
}

// New starts a server on a socket in t.TempDir() and stops it when t ends.
func New(t testing.TB) *Server {
	t.Helper()
	s, err := Listen(filepath.Join(t.TempDir(), "xs"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// Listen starts a server on the unix socket path.
func Listen(path string) (*Server, error) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	s := &Server{Path: path, ln: ln, root: newNode(""), conns: map[*conn]bool{}}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

// Close stops the server and drops every connection.
func (s *Server) Close() {
	s.ln.Close()
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Write sets path to value as a WRITE from another client would, creating
// parents and firing watches.
func (s *Server) Write(path, value string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.write(path, value); e != "" {
		return errors.New(e)
	}
	return nil
}

// Remove deletes path and its subtree as an RM from another client would.
func (s *Server) Remove(path string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.rm(path); e != "" {
		return errors.New(e)
	}
	return nil
}

// Read returns the value at path.
func (s *Server) Read(path string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.lookup(path)
	if n == nil {
		return "", false
	}
	return n.value, true
}

// Watches returns the number of watches registered over all connections.
func (s *Server) Watches() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for c := range s.conns {
		n += len(c.watches)
	}
	return n
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		c := &conn{c: nc, wake: make(chan struct{}, 1)}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			return
		}
		s.conns[c] = true
		s.mu.Unlock()
		s.wg.Add(2)
		go s.serve(c)
		go c.writeLoop(&s.wg)
	}
}

func (s *Server) serve(c *conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.shutdown()
	}()
	var hdr [16]byte
	for {
		if _, err := io.ReadFull(c.c, hdr[:]); err != nil {
			return
		}
		typ := binary.NativeEndian.Uint32(hdr[0:])
		id := binary.NativeEndian.Uint32(hdr[4:])
		tx := binary.NativeEndian.Uint32(hdr[8:])
		n := binary.NativeEndian.Uint32(hdr[12:])
		if n > payloadMax {
			return // xenstored drops a client that breaks the limit
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(c.c, payload); err != nil {
			return
		}
		s.mu.Lock()
		s.handle(c, typ, id, tx, payload)
		s.mu.Unlock()
	}
}

// handle runs with s.mu held.
func (s *Server) handle(c *conn, typ, id, tx uint32, payload []byte) {
	reply := func(t uint32, p []byte) { c.send(encode(t, id, tx, p)) }
	fail := func(errno string) { reply(xsError, append([]byte(errno), 0)) }
	ok := func() { reply(typ, []byte("OK\x00")) }

	// No transactions here; xenstored answers an unknown one with ENOENT.
	if tx != 0 && typ != xsWatch {
		fail("ENOENT")
		return
	}
	switch typ {
	case xsRead, xsDirectory, xsRm:
		path, good := oneArg(payload)
		if !good || !validPath(path) {
			fail("EINVAL")
			return
		}
		switch typ {
		case xsRead:
			n := s.lookup(path)
			if n == nil {
				fail("ENOENT")
				return
			}
			reply(typ, []byte(n.value))
		case xsDirectory:
			n := s.lookup(path)
			if n == nil {
				fail("ENOENT")
				return
			}
			var b []byte
			for _, name := range sortedKeys(n.children) {
				b = append(append(b, name...), 0)
			}
			reply(typ, b)
		case xsRm:
			if e := s.rm(path); e != "" {
				fail(e)
				return
			}
			ok()
		}
	case xsWrite:
		i := strings.IndexByte(string(payload), 0)
		if i < 0 || !validPath(string(payload[:i])) {
			fail("EINVAL")
			return
		}
		if e := s.write(string(payload[:i]), string(payload[i+1:])); e != "" {
			fail(e)
			return
		}
		ok()
	case xsWatch, xsUnwatch:
		args, good := strs(payload)
		if !good || len(args) != 2 || !validWatchPath(args[0]) {
			fail("EINVAL")
			return
		}
		w := watch{path: args[0], token: args[1]}
		idx := -1
		for i, x := range c.watches {
			if x == w {
				idx = i
			}
		}
		if typ == xsUnwatch {
			if idx < 0 {
				fail("ENOENT")
				return
			}
			c.watches = append(c.watches[:idx], c.watches[idx+1:]...)
			ok()
			return
		}
		if idx >= 0 {
			fail("EEXIST")
			return
		}
		c.watches = append(c.watches, w)
		ok()
		c.send(event(w.path, w.token))
	default:
		fail("ENOSYS")
	}
}

func (s *Server) lookup(path string) *node {
	if !validPath(path) {
		return nil
	}
	n := s.root
	for _, el := range elems(path) {
		if n = n.children[el]; n == nil {
			return nil
		}
	}
	return n
}

// write runs with s.mu held; it returns an errno name or "".
func (s *Server) write(path, value string) string {
	if !validPath(path) || path == "/" {
		return "EINVAL"
	}
	n := s.root
	for _, el := range elems(path) {
		next := n.children[el]
		if next == nil {
			next = newNode("")
			n.children[el] = next
		}
		n = next
	}
	n.value = value
	s.fire(path, true)
	return ""
}

// rm runs with s.mu held; it returns an errno name or "".
func (s *Server) rm(path string) string {
	if !validPath(path) {
		return "EINVAL"
	}
	if path == "/" {
		return "EINVAL"
	}
	parentPath, name := splitPath(path)
	parent := s.lookup(parentPath)
	if parent == nil {
		return "ENOENT"
	}
	n := parent.children[name]
	if n == nil {
		return "" // removing what is already gone is fine
	}
	// Like xenstored: every node below fires its own exact watches, the
	// removed root fires its subtree (itself and its ancestors).
	var walk func(p string, n *node)
	walk = func(p string, n *node) {
		for _, k := range sortedKeys(n.children) {
			walk(p+"/"+k, n.children[k])
		}
		if p != path {
			s.fire(p, false)
		}
	}
	walk(path, n)
	delete(parent.children, name)
	s.fire(path, true)
	return ""
}

// fire sends a WATCH_EVENT to each watch matching the change of path: a
// watch on path itself or (subtree) on any ancestor.
func (s *Server) fire(path string, subtree bool) {
	for _, c := range connList(s.conns) {
		for _, w := range c.watches {
			if w.path == path || (subtree && isChild(path, w.path)) {
				c.send(event(path, w.token))
			}
		}
	}
}

func connList(m map[*conn]bool) []*conn {
	cs := make([]*conn, 0, len(m))
	for c := range m {
		cs = append(cs, c)
	}
	return cs
}

func isChild(child, parent string) bool {
	if parent == "/" {
		return strings.HasPrefix(child, "/")
	}
	return child == parent || strings.HasPrefix(child, parent+"/")
}

func (c *conn) send(msg []byte) {
	c.mu.Lock()
	if !c.closed {
		c.queue = append(c.queue, msg)
	}
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *conn) shutdown() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.c.Close()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// writeLoop sends queued messages so a client that stops reading never
// blocks the server's lock.
func (c *conn) writeLoop(wg *sync.WaitGroup) {
	defer wg.Done()
	for range c.wake {
		c.mu.Lock()
		q, closed := c.queue, c.closed
		c.queue = nil
		c.mu.Unlock()
		if closed {
			return
		}
		for _, m := range q {
			if _, err := c.c.Write(m); err != nil {
				return
			}
		}
	}
}

func encode(typ, id, tx uint32, payload []byte) []byte {
	b := make([]byte, 16+len(payload))
	binary.NativeEndian.PutUint32(b[0:], typ)
	binary.NativeEndian.PutUint32(b[4:], id)
	binary.NativeEndian.PutUint32(b[8:], tx)
	binary.NativeEndian.PutUint32(b[12:], uint32(len(payload)))
	copy(b[16:], payload)
	return b
}

// event is a WATCH_EVENT: req_id and tx_id 0, payload "path\0token\0".
func event(path, token string) []byte {
	return encode(xsWatchEvent, 0, 0, []byte(path+"\x00"+token+"\x00"))
}

// strs splits a payload of NUL-terminated strings.
func strs(p []byte) ([]string, bool) {
	if len(p) == 0 || p[len(p)-1] != 0 {
		return nil, false
	}
	return strings.Split(string(p[:len(p)-1]), "\x00"), true
}

// oneArg accepts exactly "arg\0", as xenstored's onearg() does.
func oneArg(p []byte) (string, bool) {
	a, ok := strs(p)
	if !ok || len(a) != 1 {
		return "", false
	}
	return a[0], true
}

// validPath applies xenstored's rules for absolute paths: ASCII
// alphanumerics and -/_@, no empty, doubled or trailing slashes, at most
// 3072 bytes.
func validPath(p string) bool {
	if p == "/" {
		return true
	}
	if !strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/") || strings.Contains(p, "//") || len(p) > 3072 {
		return false
	}
	for _, r := range p {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case r == '-' || r == '/' || r == '_' || r == '@':
		default:
			return false
		}
	}
	return true
}

// validWatchPath also admits special watches such as @releaseDomain.
func validWatchPath(p string) bool {
	return validPath(p) || (strings.HasPrefix(p, "@") && !strings.ContainsRune(p, 0))
}

func elems(p string) []string {
	if p == "/" {
		return nil
	}
	return strings.Split(p[1:], "/")
}

func splitPath(p string) (parent, name string) {
	i := strings.LastIndexByte(p, '/')
	if i == 0 {
		return "/", p[1:]
	}
	return p[:i], p[i+1:]
}

func sortedKeys(m map[string]*node) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
