package cli

import (
	"context"
	"os"

	"go.uber.org/zap"

	"github.com/selfannounce/selfannounce/announce/daemon"
	"github.com/selfannounce/selfannounce/announce/libvirtev"
	"github.com/selfannounce/selfannounce/announce/resolve"
)

// startLibvirt subscribes to libvirt's lifecycle events when this host runs
// libvirtd. A host without the socket at start gets no watcher, and so no
// reconnect timer while idle.
func startLibvirt(ctx context.Context, log *zap.Logger, dm *daemon.Daemon, r *reloadable) {
	cfg := r.cfg()
	if cfg.LibvirtSocket == "off" {
		return
	}
	if _, err := os.Stat(cfg.LibvirtSocket); err != nil {
		log.Info("no libvirtd socket; libvirt resume events off", zap.String("socket", cfg.LibvirtSocket))
		return
	}
	w := libvirtev.New(cfg.LibvirtSocket, log)
	go func() {
		_ = w.Run(ctx, func(ev libvirtev.Event) {
			devs := libvirtDevs(ctx, log, r, ev.Domain)
			log.Info("libvirt: domain resumed after migration", zap.String("domain", ev.Domain), zap.String("detail", ev.Detail), zap.Strings("interfaces", devs))
			dm.Resumed(ev.Domain, devs, ev.At)
		})
	}()
	log.Info("following libvirt resume events", zap.String("socket", cfg.LibvirtSocket))
}

// libvirtDevs names the domain's interfaces from libvirt's live XML, which
// is a file read, and falls back to asking libvirtd.
func libvirtDevs(ctx context.Context, log *zap.Logger, r *reloadable, domain string) []string {
	cfg := r.cfg()
	var devs []string
	if ifs, err := resolve.LibvirtDomainInterfaces(cfg.LibvirtStatusDir, domain); err == nil {
		for _, i := range ifs {
			devs = append(devs, i.Dev)
		}
		return devs
	}
	ifs, err := libvirtev.DomainInterfaces(ctx, cfg.LibvirtSocket, domain)
	if err != nil {
		log.Warn("libvirt: cannot list the domain's interfaces", zap.String("domain", domain), zap.Error(err))
		return nil
	}
	for _, i := range ifs {
		devs = append(devs, i.Dev)
	}
	return devs
}
