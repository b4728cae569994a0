package cli

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/announce/config"
	"github.com/selfannounce/selfannounce/announce/xenstore/xenstoretest"
)

// gatedProxy stands between the daemon and xenstored and holds every
// request until open is called: a resolve in progress, for as long as the
// test needs.
type gatedProxy struct {
	path    string
	seen    chan struct{}
	gate    chan struct{}
	once    sync.Once
	gateOne sync.Once
}

func newGatedProxy(t *testing.T, upstream string) *gatedProxy {
	t.Helper()
	p := &gatedProxy{path: filepath.Join(t.TempDir(), "xs-proxy"), seen: make(chan struct{}), gate: make(chan struct{})}
	ln, err := net.Listen("unix", p.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); p.open() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("unix", upstream)
			if err != nil {
				c.Close()
				continue
			}
			go func() { io.Copy(c, up); c.Close() }()
			go func() {
				defer up.Close()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						p.once.Do(func() { close(p.seen) })
						<-p.gate
						if _, werr := up.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return p
}

func (p *gatedProxy) open() { p.gateOne.Do(func() { close(p.gate) }) }

// A SIGHUP while a resolve waits on xenstored must not fail that resolve:
// the old client is closed once the resolve has returned (#11 item 11).
func TestReloadDuringResolveKeepsIt(t *testing.T) {
	srv := xenstoretest.New(t)
	if err := srv.Write("/local/domain/0/backend/vif/5/0/mac", "00:16:3e:00:05:00"); err != nil {
		t.Fatal(err)
	}
	px := newGatedProxy(t, srv.Path)
	mk := func() *config.Config {
		c := config.Default()
		c.XenstorePath = px.path
		c.LibvirtStatusDir = t.TempDir()
		return c
	}
	r := &reloadable{}
	r.set(mk())
	t.Cleanup(r.close)
	type result struct {
		mac string
		ok  bool
		err error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		g, ok, err := r.resolve(ctx, "vif5.0")
		done <- result{g.MAC.String(), ok, err}
	}()
	select {
	case <-px.seen:
	case <-time.After(10 * time.Second):
		t.Fatal("the resolve never reached xenstored")
	}
	r.set(mk()) // SIGHUP
	px.open()
	res := <-done
	if !res.ok || res.mac != "00:16:3e:00:05:00" {
		t.Fatalf("resolve across a reload: ok %v mac %s err %v, want the backend's MAC", res.ok, res.mac, res.err)
	}
	// The new resolvers work as well.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if g, ok, err := r.resolve(ctx, "vif5.0"); !ok || g.MAC.String() != "00:16:3e:00:05:00" {
		t.Fatalf("resolve after the reload: ok %v mac %v err %v", ok, g.MAC, err)
	}
}
