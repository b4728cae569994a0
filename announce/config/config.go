// Package config reads selfannounce's YAML configuration. The one-shot and
// the daemon read the same file, so an operator describes a host once.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/schedule"
)

// DefaultPath is where the daemon looks when --config is not given.
const DefaultPath = "/etc/selfannounce/config.yaml"

// Trigger says when a port's arrival is announced.
type Trigger string

const (
	// TriggerCarrier announces when the port becomes ready: right for Xen
	// netback vifs, whose carrier rises only once the resumed guest connects.
	TriggerCarrier Trigger = "carrier"
	// TriggerGuestFrame also waits for a frame from the guest: a tap has
	// carrier long before the migrated VM runs.
	TriggerGuestFrame Trigger = "guest-frame"
	// TriggerXenStart also waits for the port's Xen domain to start here:
	// xl renames an incoming domain from NAME--incoming to NAME right
	// before unpausing it. An HVM guest's emulated-NIC tap has carrier,
	// and is bridged, while the domain is still paused and a silent guest
	// sends nothing after it resumes (see package xenstart).
	TriggerXenStart Trigger = "xen-start"
	// TriggerManual announces only on request.
	TriggerManual Trigger = "manual"
)

// PortRule maps port names to a trigger; the first match wins.
type PortRule struct {
	Match   string  `yaml:"match"`
	Trigger Trigger `yaml:"trigger"`
}

// Guest is a statically configured identity for ports matching Port.
type Guest struct {
	Port string   `yaml:"port"`
	MAC  string   `yaml:"mac"`
	IPs  []string `yaml:"ips"`
}

// Duration is a time.Duration written as a Go duration string ("50ms");
// bare integers are refused because their unit would be a guess.
type Duration time.Duration

func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: duration must be a string like \"50ms\"", n.Line)
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: malformed duration %q (want e.g. \"50ms\")", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// Schedule mirrors schedule.Schedule with YAML durations; unset keys keep
// QEMU's defaults.
type Schedule struct {
	Initial *Duration `yaml:"initial"`
	Step    *Duration `yaml:"step"`
	Max     *Duration `yaml:"max"`
	Rounds  *int      `yaml:"rounds"`
}

// Libvirt configures where libvirt's state is read from.
type Libvirt struct {
	// StatusDir holds libvirt's live domain XML.
	StatusDir string `yaml:"status-dir"`
	// Socket is libvirtd's socket, used for lifecycle events; "off" disables.
	Socket string `yaml:"socket"`
}

// Xenstore configures the xenstore resolver.
type Xenstore struct {
	// Path is the xenstored socket or xenbus device; empty tries both
	// default locations, "off" disables the resolver.
	Path string `yaml:"path"`
}

// OVS configures Open vSwitch support.
type OVS struct {
	// DB is the OVSDB address; "off" disables OVS support.
	DB string `yaml:"db"`
	// Rundir holds the bridges' OpenFlow management sockets.
	Rundir string `yaml:"rundir"`
	// Action is "normal" (default) or "resubmit:N" for controller-driven
	// bridges such as OVN's br-int.
	Action string `yaml:"action"`
}

// Metrics configures the Prometheus endpoint.
type Metrics struct {
	// Listen is host:port; empty disables the endpoint.
	Listen *string `yaml:"listen"`
}

// Flap guards the network against a guest toggling its link.
type Flap struct {
	// Holddown is the least time between two bursts for the same MAC. An
	// arrival inside it is deferred to its end, not dropped, so the last
	// arrival of a flapping guest is still announced.
	Holddown *Duration `yaml:"holddown"`
}

// File is the YAML document.
type File struct {
	Guests           []Guest    `yaml:"guests"`
	Schedule         Schedule   `yaml:"schedule"`
	VMPorts          []string   `yaml:"vm-ports"`
	Bridges          []string   `yaml:"bridges"`
	Ports            []PortRule `yaml:"ports"`
	Rate             *int       `yaml:"rate"`
	TrustGuestIPs    bool       `yaml:"trust-guest-ips"`
	AnnounceExisting bool       `yaml:"announce-existing"`
	Libvirt          Libvirt    `yaml:"libvirt"`
	Xenstore         Xenstore   `yaml:"xenstore"`
	OVS              OVS        `yaml:"ovs"`
	Metrics          Metrics    `yaml:"metrics"`
	Flap             Flap       `yaml:"flap"`

	// TrustGuestFrameMAC lets the source MAC of a guest-frame port's
	// first frame name the guest when no resolver knows the port. Off by
	// default: a guest can put any MAC in a frame, and the daemon would
	// then move that MAC's bridge entry and the switch's to the guest.
	TrustGuestFrameMAC bool `yaml:"trust-guest-frame-mac"`
}

// Config is the validated, defaulted configuration.
type Config struct {
	Guests           []announce.StaticGuest
	Schedule         schedule.Schedule
	VMPorts          []string
	Bridges          []string
	Ports            []PortRule
	Rate             int
	TrustGuestIPs    bool
	AnnounceExisting bool
	LibvirtStatusDir string
	LibvirtSocket    string
	XenstorePath     string
	OVSDB            string
	OVSRundir        string
	OVSAction        string
	MetricsListen    string
	FlapHolddown     time.Duration

	// TrustGuestFrameMAC: see File.TrustGuestFrameMAC.
	TrustGuestFrameMAC bool
}

// Defaults.
var (
	DefaultVMPorts = []string{"vif*", "tap*", "vnet*"}
	DefaultPorts   = []PortRule{
		{Match: "vif*-emu", Trigger: TriggerXenStart},
		{Match: "vif*", Trigger: TriggerCarrier},
		{Match: "tap*", Trigger: TriggerGuestFrame},
		{Match: "vnet*", Trigger: TriggerGuestFrame},
	}
	// DefaultRate lets 200 VMs arriving at once each get their first round
	// (RARP, a GARP and an NA on two uplinks) out within 250 ms.
	DefaultRate          = 10000
	DefaultMetricsListen = "127.0.0.1:9474"
	DefaultLibvirtDir    = "/run/libvirt/qemu"
	DefaultLibvirtSocket = "/var/run/libvirt/libvirt-sock"
	DefaultOVSDB         = "unix:/var/run/openvswitch/db.sock"
	DefaultOVSRundir     = "/var/run/openvswitch"
	// DefaultHolddown keeps a link toggling 40 times in 4 s to at most 4
	// bursts while a VM that leaves and returns 5 s later is announced twice.
	DefaultHolddown = 1500 * time.Millisecond
)

// Default is the configuration used when no file exists.
func Default() *Config {
	c, err := Parse(nil)
	if err != nil {
		panic(err)
	}
	return c
}

// Load reads and validates a file. A missing file at the default path is
// not an error (the daemon runs on defaults); elsewhere it is.
func Load(file string, mustExist bool) (*Config, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && !mustExist {
			return Default(), nil
		}
		return nil, fmt.Errorf("config: %v", err)
	}
	c, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("config %s: %v", file, err)
	}
	return c, nil
}

// maxSize bounds what Parse reads; a config is a few kilobytes.
const maxSize = 1 << 20

// Parse validates a YAML document and fills in defaults.
func Parse(b []byte) (*Config, error) {
	if len(b) > maxSize {
		return nil, fmt.Errorf("file larger than %d bytes", maxSize)
	}
	var f File
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, oneLine(err)
	}
	return f.build()
}

func oneLine(err error) error {
	s := strings.TrimPrefix(err.Error(), "yaml: ")
	s = strings.ReplaceAll(s, "unmarshal errors:\n", "")
	fields := strings.Fields(s)
	return errors.New(strings.Join(fields, " "))
}

func (f *File) build() (*Config, error) {
	c := &Config{
		Schedule:         schedule.Default(),
		VMPorts:          DefaultVMPorts,
		Bridges:          []string{"*"},
		Ports:            DefaultPorts,
		Rate:             DefaultRate,
		TrustGuestIPs:    f.TrustGuestIPs,
		AnnounceExisting: f.AnnounceExisting,
		LibvirtStatusDir: or(f.Libvirt.StatusDir, DefaultLibvirtDir),
		LibvirtSocket:    or(f.Libvirt.Socket, DefaultLibvirtSocket),
		XenstorePath:     f.Xenstore.Path,
		OVSDB:            or(f.OVS.DB, DefaultOVSDB),
		OVSRundir:        or(f.OVS.Rundir, DefaultOVSRundir),
		OVSAction:        or(f.OVS.Action, "normal"),
		MetricsListen:    DefaultMetricsListen,
		FlapHolddown:     DefaultHolddown,

		TrustGuestFrameMAC: f.TrustGuestFrameMAC,
	}
	s := &f.Schedule
	if s.Initial != nil {
		c.Schedule.Initial = time.Duration(*s.Initial)
	}
	if s.Step != nil {
		c.Schedule.Step = time.Duration(*s.Step)
	}
	if s.Max != nil {
		c.Schedule.Max = time.Duration(*s.Max)
	}
	if s.Rounds != nil {
		c.Schedule.Rounds = *s.Rounds
	}
	if err := c.Schedule.Validate(); err != nil {
		return nil, err
	}
	if f.VMPorts != nil {
		if err := checkGlobs("vm-ports", f.VMPorts); err != nil {
			return nil, err
		}
		c.VMPorts = f.VMPorts
	}
	if f.Bridges != nil {
		if err := checkGlobs("bridges", f.Bridges); err != nil {
			return nil, err
		}
		c.Bridges = f.Bridges
	}
	if f.Ports != nil {
		for i, r := range f.Ports {
			if err := checkGlobs(fmt.Sprintf("ports[%d].match", i), []string{r.Match}); err != nil {
				return nil, err
			}
			switch r.Trigger {
			case TriggerCarrier, TriggerGuestFrame, TriggerXenStart, TriggerManual:
			default:
				return nil, fmt.Errorf("ports[%d]: unknown trigger %q (want carrier, guest-frame, xen-start or manual)", i, r.Trigger)
			}
		}
		c.Ports = f.Ports
	}
	if f.Rate != nil {
		if *f.Rate < 1 || *f.Rate > 1000000 {
			return nil, fmt.Errorf("rate %d out of range 1..1000000 frames per second", *f.Rate)
		}
		c.Rate = *f.Rate
	}
	if f.Metrics.Listen != nil {
		c.MetricsListen = *f.Metrics.Listen
	}
	if f.Flap.Holddown != nil {
		if *f.Flap.Holddown < 0 {
			return nil, fmt.Errorf("flap.holddown must not be negative")
		}
		c.FlapHolddown = time.Duration(*f.Flap.Holddown)
	}
	if _, err := ParseOVSAction(c.OVSAction); err != nil {
		return nil, err
	}
	for i, g := range f.Guests {
		sg, err := g.build()
		if err != nil {
			return nil, fmt.Errorf("guests[%d]: %v", i, err)
		}
		c.Guests = append(c.Guests, sg)
	}
	return c, nil
}

func (g Guest) build() (announce.StaticGuest, error) {
	if g.Port == "" {
		return announce.StaticGuest{}, fmt.Errorf("port missing")
	}
	if err := checkGlobs("port", []string{g.Port}); err != nil {
		return announce.StaticGuest{}, err
	}
	if g.MAC == "" {
		return announce.StaticGuest{}, fmt.Errorf("mac missing for port %q", g.Port)
	}
	mac, err := announce.ParseMAC(g.MAC)
	if err != nil {
		return announce.StaticGuest{}, err
	}
	sg := announce.StaticGuest{Port: g.Port, Guest: announce.Guest{MAC: mac, Source: "config"}}
	for _, s := range g.IPs {
		ip, err := announce.ParseIP(s)
		if err != nil {
			return announce.StaticGuest{}, err
		}
		sg.IPs = appendUnique(sg.IPs, ip)
	}
	return sg, nil
}

func appendUnique(ips []netip.Addr, ip netip.Addr) []netip.Addr {
	for _, x := range ips {
		if x == ip {
			return ips
		}
	}
	return append(ips, ip)
}

func checkGlobs(key string, globs []string) error {
	for _, g := range globs {
		if g == "" {
			return fmt.Errorf("%s: empty pattern", key)
		}
		if _, err := path.Match(g, ""); err != nil {
			return fmt.Errorf("%s: malformed pattern %q", key, g)
		}
	}
	return nil
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// TriggerFor returns the trigger of the first rule matching port, and false
// when no rule matches (the port is not a VM port the daemon handles).
func (c *Config) TriggerFor(port string) (Trigger, bool) {
	for _, r := range c.Ports {
		if ok, _ := path.Match(r.Match, port); ok {
			return r.Trigger, true
		}
	}
	return "", false
}

// BridgeWatched reports whether the daemon handles ports of this bridge.
func (c *Config) BridgeWatched(bridge string) bool { return MatchAny(c.Bridges, bridge) }

// IsVMPort reports whether a bridge port is a VM port rather than an uplink.
func (c *Config) IsVMPort(name string) bool { return MatchAny(c.VMPorts, name) }

// MatchAny reports whether name matches one of the shell globs.
func MatchAny(globs []string, name string) bool {
	for _, g := range globs {
		if ok, _ := path.Match(g, name); ok {
			return true
		}
	}
	return false
}

// OVSAction is the OpenFlow action the OVS sender applies to a packet-out.
type OVSAction struct {
	Resubmit bool
	Table    uint8
}

// ParseOVSAction parses "normal" or "resubmit:N".
func ParseOVSAction(s string) (OVSAction, error) {
	if s == "normal" {
		return OVSAction{}, nil
	}
	if t, ok := strings.CutPrefix(s, "resubmit:"); ok {
		n, err := strconv.ParseUint(t, 10, 8)
		if err == nil && n < 255 {
			return OVSAction{Resubmit: true, Table: uint8(n)}, nil
		}
	}
	return OVSAction{}, fmt.Errorf("ovs.action %q: want \"normal\" or \"resubmit:TABLE\" (0-254)", s)
}
