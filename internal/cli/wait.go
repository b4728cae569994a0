package cli

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/selfannounce/selfannounce/announce/config"
	"github.com/selfannounce/selfannounce/announce/daemon"
	"github.com/selfannounce/selfannounce/announce/guestframe"
	"github.com/selfannounce/selfannounce/announce/netwatch"
)

// waitReady waits, event-driven, until every port is ready by the daemon's
// rules (and, for guest-frame ports, has carried a frame from the guest),
// or until timeout. It returns an error per port that never got there.
func waitReady(ctx context.Context, log *zap.Logger, cfg *config.Config, ports []string, timeout time.Duration) map[string]error {
	errs := map[string]error{}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	w, err := netwatch.New()
	if err != nil {
		for _, p := range ports {
			errs[p] = fmt.Errorf("cannot watch links: %w", err)
		}
		return errs
	}
	defer w.Close()
	want := map[string]bool{}
	for _, p := range ports {
		want[p] = true
	}
	links := map[int]netwatch.Link{}
	ready := map[string]bool{}
	framed := map[string]bool{}
	listening := map[string]bool{}
	frames := make(chan string, len(ports))
	done := make(chan struct{})
	check := func() {
		for name := range want {
			if ready[name] && (framed[name] || !needsFrame(cfg, name)) {
				delete(want, name)
				log.Info("port ready", zap.String("port", name))
			}
		}
		if len(want) == 0 {
			select {
			case <-done:
			default:
				close(done)
			}
		}
	}
	listen := func(l netwatch.Link) {
		if !needsFrame(cfg, l.Name) || listening[l.Name] {
			return
		}
		listening[l.Name] = true
		fl, err := guestframe.Listen(l.Index)
		if err != nil {
			log.Warn("cannot listen for guest frames", zap.String("port", l.Name), zap.Error(err))
			return
		}
		go func() {
			defer fl.Close()
			if _, _, err := fl.Wait(ctx); err == nil {
				frames <- l.Name
			}
		}()
	}
	apply := func(l netwatch.Link) {
		links[l.Index] = l
		if want[l.Name] {
			listen(l)
		}
		for _, o := range links {
			if want[o.Name] {
				ready[o.Name] = daemon.LinuxReady(cfg, links, o)
			}
		}
	}
	var mu chan struct{} = make(chan struct{}, 1)
	mu <- struct{}{}
	go func() {
		_ = w.Run(ctx, func(ls []netwatch.Link) {
			<-mu
			for _, l := range ls {
				apply(l)
			}
			check()
			mu <- struct{}{}
		}, func(ev netwatch.Event) {
			<-mu
			if ev.Deleted {
				delete(links, ev.Link.Index)
				ready[ev.Link.Name] = false
			} else {
				apply(ev.Link)
			}
			check()
			mu <- struct{}{}
		})
	}()
	for {
		select {
		case <-done:
			return errs
		case name := <-frames:
			<-mu
			framed[name] = true
			check()
			mu <- struct{}{}
		case <-ctx.Done():
			<-mu
			for name := range want {
				why := "not attached, up, with carrier and forwarding"
				if ready[name] {
					why = "no frame from the guest yet"
				}
				errs[name] = fmt.Errorf("port %s not ready after %v: %s", name, timeout, why)
			}
			mu <- struct{}{}
			return errs
		}
	}
}

func needsFrame(cfg *config.Config, port string) bool {
	t, _ := cfg.TriggerFor(port)
	return t == config.TriggerGuestFrame
}
