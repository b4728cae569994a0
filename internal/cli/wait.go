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
	"github.com/selfannounce/selfannounce/announce/ovs"
	"github.com/selfannounce/selfannounce/announce/resolve"
	"github.com/selfannounce/selfannounce/announce/xenstart"
)

// waitReady waits, event-driven, until in every group one port is ready by
// the daemon's rules (and, for guest-frame ports, has carried a frame from
// the guest; for xen-start ports, its Xen domain has started here), or
// until timeout. A group is one guest's ports: a Xen HVM
// guest has a PV vif and an emulated tap, and only the one it uses becomes
// ready. It returns the ready ports, and an error for every port of a group
// that never got there.
func waitReady(ctx context.Context, log *zap.Logger, cfg *config.Config, groups [][]string, timeout time.Duration) (map[string]bool, map[string]error) {
	errs := map[string]error{}
	var ports []string
	for _, g := range groups {
		ports = append(ports, g...)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	w, err := netwatch.New()
	if err != nil {
		for _, p := range ports {
			errs[p] = fmt.Errorf("cannot watch links: %w", err)
		}
		return nil, errs
	}
	defer w.Close()
	want := map[string]bool{}
	for _, p := range ports {
		want[p] = true
	}
	// OVS ports are ready by OVS's rule; their OpenFlow numbers come from
	// one OVSDB read (a port that gets one later is found at its next link
	// event by re-reading).
	ovsPorts := map[string]ovs.Port{}
	readOVS := func() {
		if cfg.OVSDB == "off" {
			return
		}
		sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
		defer scancel()
		if ps, err := ovs.Snapshot(sctx, cfg.OVSDB); err == nil {
			for _, p := range ps {
				ovsPorts[p.Name] = p
			}
		}
	}
	readOVS()
	links := map[int]netwatch.Link{}
	ready := map[string]bool{}
	framed := map[string]bool{}
	listening := map[string]bool{}
	frames := make(chan string, len(ports))
	// xen-start ports: the domain's start, followed from the beginning
	// (a hook runs while xl still holds an incoming domain paused).
	startedOK := map[string]bool{}
	starts := make(chan string, len(ports))
	if xw := xenStartWatcher(cfg.XenstorePath); xw != nil {
		for _, name := range ports {
			if !needsStart(cfg, name) {
				continue
			}
			domid, _, ok := resolve.ParseXenPort(name)
			if !ok {
				startedOK[name] = true
				continue
			}
			stop := xw.Follow(domid, func(ev xenstart.Event) {
				if ev.Unknown {
					log.Warn("xenstore cannot tell whether the domain has started; going by carrier", zap.String("port", name), zap.Error(ev.Err))
				}
				starts <- name
			})
			defer stop()
		}
	} else {
		for _, name := range ports {
			startedOK[name] = true
		}
	}
	done := make(chan struct{})
	got := map[string]bool{}
	check := func() {
		for name := range want {
			if ready[name] && (framed[name] || !needsFrame(cfg, name)) && (startedOK[name] || !needsStart(cfg, name)) {
				delete(want, name)
				got[name] = true
				log.Info("port ready", zap.String("port", name))
			}
		}
		pending := 0
		for _, g := range groups {
			ok := false
			for _, p := range g {
				ok = ok || got[p]
			}
			if !ok {
				pending++
			}
		}
		if pending == 0 {
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
		if want[l.Name] {
			// Not a Linux-bridge port, and OVS has not numbered it yet.
			m, hasMaster := links[l.Master]
			if op, ok := ovsPorts[l.Name]; (!ok || op.OFPort <= 0) && (l.Master == 0 || (hasMaster && m.Kind == "openvswitch")) {
				readOVS()
			}
		}
		for _, o := range links {
			if want[o.Name] {
				op, isOVS := ovsPorts[o.Name]
				ready[o.Name] = daemon.LinuxReady(cfg, links, o) || (isOVS && daemon.OVSWaitReady(cfg, links, op))
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
			<-mu
			defer func() { mu <- struct{}{} }()
			return copyReady(got), errs
		case name := <-frames:
			<-mu
			framed[name] = true
			check()
			mu <- struct{}{}
		case name := <-starts:
			<-mu
			startedOK[name] = true
			check()
			mu <- struct{}{}
		case <-ctx.Done():
			<-mu
			for _, g := range groups {
				for _, name := range g {
					if got[name] {
						continue
					}
					why := "not attached, up, with carrier and forwarding"
					switch {
					case ready[name] && needsStart(cfg, name) && !startedOK[name]:
						why = "its Xen domain has not started here yet"
					case ready[name]:
						why = "no frame from the guest yet"
					}
					errs[name] = fmt.Errorf("port %s not ready after %v: %s", name, timeout, why)
				}
			}
			r := copyReady(got)
			mu <- struct{}{}
			return r, errs
		}
	}
}

func copyReady(m map[string]bool) map[string]bool {
	out := make(map[string]bool, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func needsFrame(cfg *config.Config, port string) bool {
	t, _ := cfg.TriggerFor(port)
	return t == config.TriggerGuestFrame
}

func needsStart(cfg *config.Config, port string) bool {
	t, _ := cfg.TriggerFor(port)
	return t == config.TriggerXenStart
}
