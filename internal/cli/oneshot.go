package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/burst"
	"github.com/selfannounce/selfannounce/announce/config"
	"github.com/selfannounce/selfannounce/announce/linuxbr"
	"github.com/selfannounce/selfannounce/announce/plan"
	"github.com/selfannounce/selfannounce/announce/resolve"
	"github.com/selfannounce/selfannounce/announce/send"
)

type oneShot struct {
	g           *globals
	vif         string
	mac         string
	ips         []string
	configFile  string
	initial     time.Duration
	step        time.Duration
	max         time.Duration
	rounds      int
	vmPorts     []string
	dryRun      bool
	waitReady   time.Duration
	domid       int
	vmUUID      string
	domain      string
	xenstore    string
	libvirtDir  string
	libvirtSock string
	ovsdb       string
	// ofPool holds the OpenFlow sessions of OVS ports' plans. It is closed
	// after the bursts: PacketOut only queues a frame, and Close is what
	// puts the last round on the socket before the process exits.
	ofPool *plan.OFPool
}

func (o *oneShot) flags(c *cobra.Command) {
	f := c.Flags()
	f.StringVar(&o.vif, "vif", "", "announce the VM behind this port (vifD.N, tapD.N, vnetN, ...)")
	f.StringVar(&o.mac, "mac", "", "the guest's MAC (default: from config, xenstore or libvirt)")
	f.StringArrayVar(&o.ips, "ip", nil, "an IPv4 or IPv6 address of the guest (repeatable)")
	f.StringVar(&o.configFile, "config", "", "YAML config file (default "+config.DefaultPath+" if present)")
	f.DurationVar(&o.initial, "initial", 0, "delay after the first round (QEMU default 50ms)")
	f.DurationVar(&o.step, "step", 0, "growth of the delay per round (default 100ms)")
	f.DurationVar(&o.max, "max", 0, "largest delay between rounds (default 550ms)")
	f.IntVar(&o.rounds, "rounds", 0, "number of rounds (default 5)")
	f.StringSliceVar(&o.vmPorts, "vm-ports", nil, "globs of VM ports; other bridge ports are uplinks (default vif*,tap*,vnet*)")
	f.BoolVar(&o.dryRun, "dry-run", false, "print the plan (bridge, uplinks, VLAN, frames and send times) and send nothing")
	f.DurationVar(&o.waitReady, "wait-ready", 0, "wait up to this long for each port to be ready (attached, carrier, forwarding, and for guest-frame ports a frame from the guest) before its burst")
	f.Lookup("wait-ready").NoOptDefVal = "30s"
	f.IntVar(&o.domid, "domid", -1, "announce every vif and emulated NIC of this Xen domain")
	f.StringVar(&o.vmUUID, "vm-uuid", "", "announce every vif and emulated NIC of the Xen VM with this UUID")
	f.StringVar(&o.domain, "domain", "", "announce every interface of this running libvirt domain")
	f.StringVar(&o.xenstore, "xenstore", "", "xenstored socket or xenbus device (default: try both standard paths)")
	f.StringVar(&o.libvirtDir, "libvirt-dir", "", "libvirt's live domain XML directory (default "+config.DefaultLibvirtDir+")")
	f.StringVar(&o.libvirtSock, "libvirt-socket", "", "libvirtd socket (default "+config.DefaultLibvirtSocket+")")
	f.StringVar(&o.ovsdb, "ovsdb", "", "OVSDB address (default "+config.DefaultOVSDB+"; \"off\" disables)")
}

// target is one port to announce, with what we know of its guest.
type target struct {
	port  string
	guest announce.Guest
	known bool
}

func (o *oneShot) run(cmd *cobra.Command, _ []string) error {
	log, err := o.g.logger()
	if err != nil {
		return err
	}
	defer log.Sync()
	cfg, err := o.config(cmd)
	if err != nil {
		return err
	}
	selectors := 0
	for _, set := range []bool{o.vif != "", o.domid >= 0, o.vmUUID != "", o.domain != ""} {
		if set {
			selectors++
		}
	}
	switch {
	case cmd.Flags().Changed("domid") && (o.domid <= 0 || o.domid > xenDomidMax):
		// Checked first: a negative id would otherwise read as "not given".
		return usageErr("malformed --domid %d: a guest's domain id is 1..%d", o.domid, xenDomidMax)
	case o.vmUUID != "" && !resolve.ValidUUID(o.vmUUID):
		return usageErr("malformed --vm-uuid %q", o.vmUUID)
	case selectors == 0:
		return usageErr("nothing to announce: give --vif, --domid, --vm-uuid or --domain")
	case selectors > 1:
		return usageErr("--vif, --domid, --vm-uuid and --domain exclude each other")
	case o.mac != "" && o.vif == "":
		return usageErr("--mac goes with --vif")
	}
	if o.vif != "" {
		if err := linuxbr.ValidName(o.vif); err != nil {
			return usageErr("%v", err)
		}
	}
	var cliGuest *announce.Guest
	if o.mac != "" || len(o.ips) > 0 {
		g := announce.Guest{Source: "cli"}
		if o.mac != "" {
			if g.MAC, err = announce.ParseMAC(o.mac); err != nil {
				return usageErr("%v", err)
			}
		}
		for _, s := range o.ips {
			ip, err := announce.ParseIP(s)
			if err != nil {
				return usageErr("%v", err)
			}
			g.IPs = append(g.IPs, ip)
		}
		cliGuest = &g
	}

	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	targets, err := o.select_(ctx, cfg, cliGuest)
	if err != nil {
		return err
	}
	var failed []string
	if o.waitReady > 0 && !o.dryRun {
		targets, failed = o.waitTargets(ctx, log, cfg, targets)
	}
	if !o.dryRun {
		if err := send.CheckRaw(); err != nil {
			return runtimeErr(err)
		}
	}
	// Deferred first, so it runs last: after the engine has stopped.
	defer func() {
		if o.ofPool != nil {
			o.ofPool.Close()
		}
	}()
	sender := send.NewPacketSender()
	defer sender.Close()
	lp := &plan.Linux{Host: linuxbr.NewHost("/sys"), Sender: sender, VMPorts: cfg.VMPorts}
	engine := burst.New(cfg.Rate, nil)
	defer engine.Close()
	type outcome struct {
		port string
		res  chan burst.Result
	}
	var started []outcome
	total := len(targets) + len(failed)
	for _, t := range targets {
		pl, err := o.plan(ctx, lp, cfg, t)
		if err != nil {
			if total == 1 {
				return err
			}
			log.Error("cannot announce", zap.String("port", t.port), zap.Error(err))
			failed = append(failed, t.port)
			continue
		}
		if o.dryRun {
			pl.Describe(cmd.OutOrStdout(), cfg.Schedule)
			continue
		}
		if pl.Repair != nil {
			changed, err := pl.Repair(ctx)
			if err != nil {
				if total == 1 {
					return runtimeErr(fmt.Errorf("repairing bridge %s for %s: %w", pl.Bridge, pl.Port, err))
				}
				log.Error("bridge repair failed", zap.String("port", t.port), zap.Error(err))
				failed = append(failed, t.port)
				continue
			}
			if changed {
				log.Info("bridge forwarding entry moved to the VM port", zap.String("bridge", pl.Bridge), zap.String("port", pl.Port), zap.Stringer("mac", pl.Guest.MAC))
			}
		}
		ch := make(chan burst.Result, 1)
		if err := engine.Start(&burst.Burst{
			Key:      pl.Guest.MAC.String(),
			Packets:  pl.Packets,
			Schedule: cfg.Schedule,
			Done:     func(r burst.Result) { ch <- r },
		}); err != nil {
			return runtimeErr(err)
		}
		log.Info("announcing", zap.String("port", pl.Port), zap.String("bridge", pl.Bridge),
			zap.Stringer("mac", pl.Guest.MAC), zap.Stringers("ips", pl.Guest.IPs), zap.String("source", pl.Guest.Source),
			zap.Int("frames_per_round", len(pl.Packets)))
		started = append(started, outcome{t.port, ch})
	}
	for _, s := range started {
		var r burst.Result
		select {
		case r = <-s.res:
		case <-ctx.Done():
			engine.Close()
			r = <-s.res
		}
		if r.Cancelled || r.Failed > 0 {
			log.Error("burst incomplete", zap.String("port", s.port), zap.Int("frames", r.Frames), zap.Int("failed", r.Failed), zap.Bool("cancelled", r.Cancelled), zap.Error(r.Err))
			failed = append(failed, s.port)
			if total == 1 {
				if r.Err != nil {
					return runtimeErr(fmt.Errorf("sending on %s: %w", s.port, r.Err))
				}
				return runtimeErr(fmt.Errorf("burst on %s interrupted", s.port))
			}
			continue
		}
		log.Info("announced", zap.String("port", s.port), zap.Int("rounds", r.Rounds), zap.Int("frames", r.Frames),
			zap.Duration("duration", r.LastFrame.Sub(r.FirstFrame)))
	}
	if len(failed) > 0 {
		code := ExitPartial
		if total == 1 {
			code = ExitRuntime
		}
		return withCode(code, fmt.Errorf("%d of %d ports not announced: %s", len(failed), total, strings.Join(failed, ", ")))
	}
	return nil
}

// waitTargets waits for each guest's ports and keeps, per guest, the first
// port that became ready; the rest of a guest's ports are dropped, and a
// guest none of whose ports got ready is reported as failed.
func (o *oneShot) waitTargets(ctx context.Context, log *zap.Logger, cfg *config.Config, targets []target) ([]target, []string) {
	var groups [][]string
	index := map[string]int{}
	for _, t := range targets {
		k := t.port
		if t.known {
			k = t.guest.MAC.String()
		}
		i, ok := index[k]
		if !ok {
			i = len(groups)
			index[k] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], t.port)
	}
	ready, errs := waitReady(ctx, log, cfg, groups, o.waitReady)
	var keep []target
	var failed []string
	done := map[int]bool{}
	for _, t := range targets {
		k := t.port
		if t.known {
			k = t.guest.MAC.String()
		}
		i := index[k]
		if done[i] {
			continue
		}
		if ready[t.port] {
			keep = append(keep, t)
			done[i] = true
		}
	}
	for i, g := range groups {
		if !done[i] {
			why := ""
			for _, p := range g {
				log.Error("port not ready, not announced", zap.String("port", p), zap.Error(errs[p]))
				if why == "" && errs[p] != nil {
					why = errs[p].Error()
				}
			}
			failed = append(failed, fmt.Sprintf("%s (%s)", strings.Join(g, "/"), why))
		}
	}
	return keep, failed
}

func (o *oneShot) config(cmd *cobra.Command) (*config.Config, error) {
	file, must := config.DefaultPath, false
	if o.configFile != "" {
		file, must = o.configFile, true
	}
	cfg, err := config.Load(file, must)
	if err != nil {
		return nil, usageErr("%v", err)
	}
	f := cmd.Flags()
	s := cfg.Schedule
	if f.Changed("initial") {
		s.Initial = o.initial
	}
	if f.Changed("step") {
		s.Step = o.step
	}
	if f.Changed("max") {
		s.Max = o.max
	}
	if f.Changed("rounds") {
		s.Rounds = o.rounds
	}
	if err := s.Validate(); err != nil {
		return nil, usageErr("%v", err)
	}
	cfg.Schedule = s
	if f.Changed("vm-ports") {
		for _, p := range o.vmPorts {
			if !validGlob(p) {
				return nil, usageErr("malformed --vm-ports pattern %q", p)
			}
		}
		cfg.VMPorts = o.vmPorts
	}
	if o.libvirtDir != "" {
		cfg.LibvirtStatusDir = o.libvirtDir
	}
	if o.libvirtSock != "" {
		cfg.LibvirtSocket = o.libvirtSock
	}
	if o.xenstore != "" {
		cfg.XenstorePath = o.xenstore
	}
	if o.ovsdb != "" {
		cfg.OVSDB = o.ovsdb
	}
	return cfg, nil
}

func validGlob(p string) bool {
	_, err := path.Match(p, "")
	return p != "" && err == nil
}

// select_ turns the selector flags into ports, with identities where the
// selector itself knows them (xenstore and libvirt do).
func (o *oneShot) select_(ctx context.Context, cfg *config.Config, cli *announce.Guest) ([]target, error) {
	switch {
	case o.vif != "":
		t := target{port: o.vif}
		if cli != nil && cli.MAC != nil {
			t.guest, t.known = *cli, true
		}
		return []target{t}, nil
	case o.domid >= 0 || o.vmUUID != "":
		return o.selectXen(ctx, cfg)
	default:
		return o.selectLibvirt(ctx, cfg)
	}
}

// plan resolves the guest when needed, drops host-owned addresses, and plans
// the frames.
func (o *oneShot) plan(ctx context.Context, lp *plan.Linux, cfg *config.Config, t target) (*plan.Plan, error) {
	g := t.guest
	if !t.known {
		var err error
		g, err = o.resolve(ctx, cfg, t.port)
		if err != nil {
			return nil, err
		}
	}
	if len(o.ips) > 0 && o.vif != "" {
		// --ip names the addresses outright, whatever a resolver found.
		g.IPs = nil
		for _, s := range o.ips {
			ip, _ := announce.ParseIP(s)
			g.IPs = append(g.IPs, ip)
		}
	}
	macs, ips, err := hostOwned(cfg.VMPorts)(ctx)
	if err != nil {
		return nil, runtimeErr(fmt.Errorf("listing this host's addresses: %w", err))
	}
	mac := g.MAC
	g, err = resolve.DropHostOwned(g, macs, ips)
	if err != nil {
		return nil, runtimeErr(fmt.Errorf("port %s: %v%s", t.port, err, ownerOf(mac)))
	}
	pl, err := o.planPath(ctx, lp, cfg, t.port, g)
	if err != nil {
		return nil, runtimeErr(err)
	}
	return pl, nil
}

func (o *oneShot) resolve(ctx context.Context, cfg *config.Config, port string) (announce.Guest, error) {
	chain := resolverChain(cfg)
	defer chain.close()
	g, ok, errs := chain.Resolve(ctx, port)
	g, ok = ovsGuest(ctx, cfg, port, g, ok)
	if ok {
		return g, nil
	}
	msg := fmt.Sprintf("no MAC known for port %q: give --mac, or a guests entry in the config", port)
	if len(errs) > 0 {
		msg += " (" + joinErrs(errs) + ")"
	}
	return announce.Guest{}, runtimeErr(errors.New(msg))
}

func joinErrs(errs []error) string {
	s := make([]string, len(errs))
	for i, e := range errs {
		s[i] = e.Error()
	}
	return strings.Join(s, "; ")
}

// ownerOf names the host interfaces that carry mac, for the refusal message.
func ownerOf(mac net.HardwareAddr) string {
	ifs, err := net.Interfaces()
	if err != nil {
		return ""
	}
	var names []string
	for _, i := range ifs {
		if bytes.Equal(i.HardwareAddr, mac) {
			names = append(names, i.Name)
		}
	}
	if len(names) == 0 {
		return ""
	}
	return " (the address of " + strings.Join(names, ", ") + ")"
}
