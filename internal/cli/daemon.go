package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/burst"
	"github.com/selfannounce/selfannounce/announce/config"
	"github.com/selfannounce/selfannounce/announce/daemon"
	"github.com/selfannounce/selfannounce/announce/guestframe"
	"github.com/selfannounce/selfannounce/announce/linuxbr"
	"github.com/selfannounce/selfannounce/announce/metrics"
	"github.com/selfannounce/selfannounce/announce/netwatch"
	"github.com/selfannounce/selfannounce/announce/plan"
	"github.com/selfannounce/selfannounce/announce/resolve"
	"github.com/selfannounce/selfannounce/announce/send"
	"github.com/selfannounce/selfannounce/announce/xenstart"
	"github.com/selfannounce/selfannounce/announce/xenstore"
)

type daemonCmd struct {
	g                *globals
	configFile       string
	announceExisting bool
	metricsListen    string
	netlinkRcvbuf    int
	ovsdb            string
}

func newDaemonCommand(g *globals) *cobra.Command {
	d := &daemonCmd{g: g}
	c := &cobra.Command{
		Use:   "daemon",
		Short: "Announce every VM arrival on this host at the moment it really arrives",
		Long: `daemon watches VM ports (Xen vifs, emulated-NIC taps, libvirt vnets) join
bridges, over rtnetlink, without polling. When a port is attached, up, has
carrier and forwards, and its trigger fires (carrier for Xen netback vifs, a
first frame from the guest for taps), it announces the guest through the path
its own frames would take, on QEMU's schedule.

Ports already ready when it starts are not announced (--announce-existing
changes that). SIGHUP reloads the config; a bad file keeps the old one.
SIGTERM ends bursts in flight and exits. It notifies systemd (Type=notify)
and feeds its watchdog.`,
		Args: cobra.NoArgs,
		RunE: d.run,
	}
	f := c.Flags()
	f.StringVar(&d.configFile, "config", config.DefaultPath, "YAML config file; the daemon runs on defaults if the default file is absent")
	f.BoolVar(&d.announceExisting, "announce-existing", false, "also announce ports that are already ready at start")
	f.StringVar(&d.metricsListen, "metrics-listen", "", "serve Prometheus metrics on this host:port (default from config, "+config.DefaultMetricsListen+"; \"off\" disables)")
	f.StringVar(&d.ovsdb, "ovsdb", "", "OVSDB address (default from config, "+config.DefaultOVSDB+"; \"off\" disables Open vSwitch support)")
	f.IntVar(&d.netlinkRcvbuf, "netlink-rcvbuf", 0, "netlink receive buffer in bytes (default 4 MiB; tests shrink it to force overruns)")
	f.Lookup("netlink-rcvbuf").Hidden = true
	return c
}

func (d *daemonCmd) load(cmd *cobra.Command) (*config.Config, error) {
	cfg, err := config.Load(d.configFile, cmd.Flags().Changed("config"))
	if err != nil {
		return nil, err
	}
	if d.announceExisting {
		cfg.AnnounceExisting = true
	}
	if d.ovsdb != "" {
		cfg.OVSDB = d.ovsdb
	}
	if err := checkOVSDB(cfg.OVSDB); err != nil {
		return nil, err
	}
	switch {
	case d.metricsListen == "off":
		cfg.MetricsListen = ""
	case d.metricsListen != "":
		cfg.MetricsListen = d.metricsListen
	}
	return cfg, nil
}

func (d *daemonCmd) run(cmd *cobra.Command, _ []string) error {
	log, err := d.g.logger()
	if err != nil {
		return err
	}
	defer log.Sync()
	// Caught from the start: a SIGHUP during start-up must not kill the
	// daemon (it is handled once running), nor a SIGTERM skip the cleanup.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, os.Interrupt)
	defer signal.Stop(sigs)
	cfg, err := d.load(cmd)
	if err != nil {
		return usageErr("%v", err)
	}
	if err := send.CheckRaw(); err != nil {
		return runtimeErr(err)
	}
	m := metrics.New()
	if cfg.MetricsListen != "" {
		stop, err := m.Serve(cfg.MetricsListen)
		if err != nil {
			return runtimeErr(fmt.Errorf("metrics: %w", err))
		}
		defer stop()
	}
	sender := send.NewPacketSender()
	defer sender.Close()
	engine := burst.New(cfg.Rate, m)
	defer engine.Close()

	// One rtnetlink socket each for the FDB repairs and the address dumps
	// of every arrival; they keep no kernel state between arrivals.
	fdb := &linuxbr.FDB{Refused: m.FDBRefused}
	defer fdb.Close()
	hostIPs := &resolve.HostIPLister{}
	defer hostIPs.Close()
	res := &reloadable{}
	res.set(cfg)
	defer res.close()
	deps := daemon.Deps{
		Log:          log,
		Engine:       engine,
		Linux:        &linuxPlanner{cfg: res, sender: sender, host: linuxbr.NewHost("/sys"), fdb: fdb},
		Metrics:      m,
		Resolve:      res.resolve,
		HostIPs:      hostIPs.List,
		ListenFrames: func(ifindex int) (daemon.FrameListener, error) { return guestframe.Listen(ifindex) },
	}
	if w := xenStartWatcher(cfg.XenstorePath); w != nil {
		deps.XenStarted = w.Follow
	}
	dm := daemon.New(cfg, deps)
	defer dm.Close()

	var opts []netwatch.Option
	if d.netlinkRcvbuf > 0 {
		opts = append(opts, netwatch.WithReadBuffer(d.netlinkRcvbuf))
	}
	w, err := netwatch.New(opts...)
	if err != nil {
		return runtimeErr(fmt.Errorf("netlink: %w", err))
	}
	defer w.Close()
	m.CountOverruns(w.Overruns)

	ctx, cancel := context.WithCancel(cmd.Context())
	defer cancel()
	started := make(chan struct{})
	werr := make(chan error, 1)
	go func() {
		werr <- w.Run(ctx, func(links []netwatch.Link) {
			dm.Initial(links)
			close(started)
		}, dm.Link)
	}()
	select {
	case <-started:
	case err := <-werr:
		return runtimeErr(fmt.Errorf("netlink: %w", err))
	}
	log.Info("watching", zap.String("config", d.configFile), zap.Bool("announce_existing", cfg.AnnounceExisting),
		zap.String("metrics", cfg.MetricsListen), zap.Duration("schedule", cfg.Schedule.Duration()), zap.Int("rate", cfg.Rate))
	sddaemon.SdNotify(false, sddaemon.SdNotifyReady)
	startOptional(ctx, log, dm, res)

	// The watchdog ticker is the only timer while idle, and only under
	// systemd with WatchdogSec set. Each ping first goes through the event
	// path (the daemon's lock, the burst engine's): a wedged loop stops the
	// pings, and systemd restarts the daemon.
	if iv, err := sddaemon.SdWatchdogEnabled(false); err == nil && iv > 0 {
		t := time.NewTicker(iv / 2)
		defer t.Stop()
		go dm.Watchdog(ctx, t.C, func() { sddaemon.SdNotify(false, sddaemon.SdNotifyWatchdog) })
	}
	for {
		select {
		case err := <-werr:
			if ctx.Err() != nil {
				return nil
			}
			return runtimeErr(fmt.Errorf("netlink watcher stopped: %w", err))
		case s := <-sigs:
			if s == syscall.SIGHUP {
				sddaemon.SdNotify(false, sddaemon.SdNotifyReloading)
				ncfg, err := d.load(cmd)
				if err != nil {
					log.Error("config reload failed; keeping the old config", zap.Error(err))
				} else {
					res.set(ncfg)
					dm.SetConfig(ncfg)
					engine.SetRate(ncfg.Rate)
					log.Info("config reloaded", zap.String("config", d.configFile))
				}
				sddaemon.SdNotify(false, sddaemon.SdNotifyReady)
				continue
			}
			log.Info("stopping", zap.String("signal", s.String()))
			sddaemon.SdNotify(false, sddaemon.SdNotifyStopping)
			cancel()
			engine.Close()
			return nil
		}
	}
}

// linuxPlanner plans with the config in force.
type linuxPlanner struct {
	cfg    *reloadable
	sender send.Sender
	host   linuxbr.Host
	fdb    *linuxbr.FDB
}

func (l *linuxPlanner) Plan(port string, g announce.Guest) (*plan.Plan, error) {
	lp := plan.Linux{Host: l.host, Sender: l.sender, VMPorts: l.cfg.cfg().VMPorts, RepairFDB: l.fdb.Repair}
	return lp.Plan(port, g)
}

// PlanLinks resolves the path from the daemon's link table: no sysfs walk on
// the arrival's critical path, only the bridge's vlan_filtering file, and the
// VLAN table when the bridge filters.
func (l *linuxPlanner) PlanLinks(links []linuxbr.TableLink, port string, g announce.Guest) (*plan.Plan, error) {
	h := &linuxbr.TableHost{Links: links, Filtering: linuxbr.SysfsVLANFiltering("/sys"), VLANTables: linuxbr.NetlinkVLANTables}
	lp := plan.Linux{Host: h, Sender: l.sender, VMPorts: l.cfg.cfg().VMPorts, RepairFDB: l.fdb.Repair}
	return lp.Plan(port, g)
}

// xenStartWatcher follows Xen domains' starts for the xen-start trigger
// over its own xenstore connection, dialled when a port first needs it (a
// KVM host never dials). The path is the one the daemon started with; "off"
// turns xenstore off, and xen-start ports then fall back to carrier.
func xenStartWatcher(path string) *xenstart.Watcher {
	if path == "off" {
		return nil
	}
	return xenstart.New(func() (xenstart.Store, error) {
		if path == "" {
			return xenstore.DialDefault()
		}
		return xenstore.Dial(path)
	})
}
