package doctor

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Host is what the doctor knows about a host's network setup, read from
// /sys, /proc and /etc under a root so fixture trees stand in for real hosts.
//
// Reading never fails on a missing or unreadable attribute: dom0s run
// kernels from 2.6.32 on, which lack files newer ones have, and --root may
// be handed a partial copy. What could not be read is recorded in Unread,
// and the checks that need it skip that object and say why.
type Host struct {
	Links map[string]*Link
	// DefaultRoute is the interface of the lowest-metric IPv4 default route.
	DefaultRoute string
	// Inventory holds /etc/xensource-inventory's KEY='value' pairs; nil when
	// the file does not exist, which is how a XenServer host is told apart.
	Inventory map[string]string
	// Unread maps host-wide files ("proc/net/route") and listed links
	// ("sys/class/net/NAME") that could not be read to the reason.
	Unread map[string]string
}

// Link is one /sys/class/net entry.
type Link struct {
	Name      string
	MTU       int
	Operstate string
	// Master is the bridge or bond this link is enslaved to ("" if none).
	Master string
	// Lowers are the devices this one is stacked on: bridge ports, bond
	// members, a VLAN's parent.
	Lowers []string
	Bridge *Bridge
	Port   *BridgePort
	Bond   *Bond
	// Unread maps attributes (paths under the link's sysfs directory, such
	// as "brport/learning") that could not be read to the reason.
	Unread map[string]string
}

// Bridge holds the bridge/ attributes the checks use. Times are in
// centiseconds, as sysfs shows them (USER_HZ).
type Bridge struct {
	STPState          int
	ForwardDelay      int
	AgeingTime        int
	MulticastSnooping int
	MulticastQuerier  int
	// MulticastQueryInterval is how often a querier asks for MLD reports.
	MulticastQueryInterval int
	Ports                  []string
}

// BridgePort holds brport/ attributes.
type BridgePort struct {
	Learning int
	State    int
}

// Bond holds a bond's mode (the kernel's name, e.g. "active-backup", or ""
// when neither sysfs nor /proc/net/bonding says) and members.
type Bond struct {
	Mode    string
	Members []string
}

// unread returns why the first of attrs could not be read, if any did not.
func (l *Link) unread(attrs ...string) (string, bool) {
	for _, a := range attrs {
		if why, ok := l.Unread[a]; ok {
			return fmt.Sprintf("no /sys/class/net/%s/%s (%s)", l.Name, a, why), true
		}
	}
	return "", false
}

// attrHints say why a kernel lacks an attribute, for the skip reasons.
var attrHints = map[string]string{
	"brport/learning":                 "kernels before 3.11 have no per-port learning switch",
	"bridge/multicast_snooping":       "kernel without IGMP/MLD snooping",
	"bridge/multicast_querier":        "kernel without IGMP/MLD snooping, or before 3.5",
	"bridge/multicast_query_interval": "kernel without IGMP/MLD snooping",
}

// reader reads one link's attributes, recording what it cannot read.
type reader struct {
	fsys fs.FS
	dir  string
	l    *Link
}

func (r *reader) miss(attr string, err error) {
	why := "missing"
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if h, ok := attrHints[attr]; ok {
			why = "missing: " + h
		}
	case err != nil:
		why = err.Error()
	}
	if r.l.Unread == nil {
		r.l.Unread = map[string]string{}
	}
	r.l.Unread[attr] = why
}

func (r *reader) int(attr string) int {
	n, err := readInt(r.fsys, path.Join(r.dir, attr))
	if err != nil {
		r.miss(attr, err)
	}
	return n
}

// ReadHost reads the host model from fsys, which is rooted where / would be.
// It fails only when fsys holds neither sys/class/net nor proc/net: then it
// is no copy of a host at all.
func ReadHost(fsys fs.FS) (*Host, error) {
	const classNet = "sys/class/net"
	h := &Host{Links: map[string]*Link{}, Unread: map[string]string{}}
	ents, err := fs.ReadDir(fsys, classNet)
	if err != nil {
		if !isDir(fsys, "proc/net") {
			return nil, fmt.Errorf("cannot list network devices: no readable /%s or /proc/net: %w", classNet, err)
		}
		h.Unread[classNet] = err.Error()
	}
	bondNames := map[string]bool{}
	if s, err := readString(fsys, path.Join(classNet, "bonding_masters")); err == nil {
		for _, n := range strings.Fields(s) {
			bondNames[n] = true
		}
	}
	for _, e := range ents {
		dir := path.Join(classNet, e.Name())
		// Entries are symlinks into /sys/devices; Stat follows them. Plain
		// files such as bonding_masters are not devices, but a symlink that
		// leads nowhere is a device a partial copy lost.
		st, err := fs.Stat(fsys, dir)
		if err != nil {
			if e.Type()&fs.ModeSymlink != 0 {
				h.Unread[dir] = err.Error()
			}
			continue
		}
		if !st.IsDir() {
			continue
		}
		l, err := readLink(fsys, dir, e.Name(), bondNames[e.Name()])
		if err != nil {
			h.Unread[dir] = err.Error()
			continue
		}
		h.Links[l.Name] = l
	}
	linkUpperLower(h)
	h.DefaultRoute, err = readDefaultRoute(fsys)
	if err != nil {
		h.Unread["proc/net/route"] = err.Error()
	}
	h.Inventory, err = readInventory(fsys)
	if err != nil {
		h.Unread["etc/xensource-inventory"] = err.Error()
	}
	return h, nil
}

// linkUpperLower fills in what kernels without lower_* links (before 3.x)
// and bonds whose member list could not be read leave out: a bridge's ports
// and a bond's members are the links naming it as master.
func linkUpperLower(h *Host) {
	for _, l := range h.sortedLinks() {
		m := h.Links[l.Master]
		if m == nil {
			continue
		}
		if !slices.Contains(m.Lowers, l.Name) {
			m.Lowers = append(m.Lowers, l.Name)
			sort.Strings(m.Lowers)
		}
		if m.Bridge != nil && l.Port != nil && !slices.Contains(m.Bridge.Ports, l.Name) {
			m.Bridge.Ports = append(m.Bridge.Ports, l.Name)
			sort.Strings(m.Bridge.Ports)
		}
		if m.Bond != nil && l.Port == nil && !slices.Contains(m.Bond.Members, l.Name) {
			if _, noList := m.Unread["bonding/slaves"]; noList {
				m.Bond.Members = append(m.Bond.Members, l.Name)
				sort.Strings(m.Bond.Members)
			}
		}
	}
}

func readLink(fsys fs.FS, dir, name string, listedBond bool) (*Link, error) {
	l := &Link{Name: name}
	r := &reader{fsys: fsys, dir: dir, l: l}
	ents, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, err
	}
	l.MTU = r.int("mtu")
	l.Operstate, _ = readString(fsys, path.Join(dir, "operstate"))
	if target, err := fs.ReadLink(fsys, path.Join(dir, "master")); err == nil {
		l.Master = path.Base(target)
	} else if target, err := fs.ReadLink(fsys, path.Join(dir, "brport", "bridge")); err == nil {
		// Kernels before 3.9 have no master link on bridge ports.
		l.Master = path.Base(target)
	}
	lowers := map[string]bool{}
	for _, e := range ents {
		if n, ok := strings.CutPrefix(e.Name(), "lower_"); ok {
			lowers[n] = true
		}
	}
	if isDir(fsys, path.Join(dir, "bridge")) || isDir(fsys, path.Join(dir, "brif")) {
		b := &Bridge{
			STPState:               r.int("bridge/stp_state"),
			ForwardDelay:           r.int("bridge/forward_delay"),
			AgeingTime:             r.int("bridge/ageing_time"),
			MulticastSnooping:      r.int("bridge/multicast_snooping"),
			MulticastQuerier:       r.int("bridge/multicast_querier"),
			MulticastQueryInterval: r.int("bridge/multicast_query_interval"),
		}
		ports, err := fs.ReadDir(fsys, path.Join(dir, "brif"))
		if err != nil {
			// The ports' own master links stand in (linkUpperLower).
			r.miss("brif", err)
		}
		for _, p := range ports {
			b.Ports = append(b.Ports, p.Name())
			lowers[p.Name()] = true
		}
		l.Bridge = b
	}
	if isDir(fsys, path.Join(dir, "brport")) {
		l.Port = &BridgePort{Learning: r.int("brport/learning"), State: r.int("brport/state")}
	}
	l.Bond = readBond(fsys, r, listedBond)
	if l.Bond != nil {
		for _, m := range l.Bond.Members {
			lowers[m] = true
		}
	}
	for n := range lowers {
		l.Lowers = append(l.Lowers, n)
	}
	sort.Strings(l.Lowers)
	if l.Bridge != nil {
		sort.Strings(l.Bridge.Ports)
	}
	return l, nil
}

// readBond reads a bond from sysfs bonding/, falling back to
// /proc/net/bonding for whatever sysfs lacks. A link is a bond when either
// has it, when bonding_masters lists it, or when its uevent says so; a bond
// whose mode neither file gives has Mode "" and bonding/mode in Unread.
func readBond(fsys fs.FS, r *reader, listed bool) *Bond {
	name := r.l.Name
	inSys := isDir(fsys, path.Join(r.dir, "bonding"))
	proc, procErr := readProcBond(fsys, name)
	inProc := procErr == nil || !errors.Is(procErr, fs.ErrNotExist)
	if !inSys && !inProc && !listed && !ueventBond(fsys, r.dir) {
		return nil
	}
	b := &Bond{}
	mode, modeErr := readString(fsys, path.Join(r.dir, "bonding", "mode"))
	slaves, slavesErr := readString(fsys, path.Join(r.dir, "bonding", "slaves"))
	switch {
	case modeErr == nil && mode != "":
		// "balance-rr 0": the name, then the number.
		b.Mode = strings.Fields(mode)[0]
	case procErr == nil:
		b.Mode = proc.Mode
	default:
		why := modeErr
		if modeErr == nil {
			why = errors.New("empty")
		}
		r.miss("bonding/mode", fmt.Errorf("%v; /proc/net/bonding/%s: %v", why, name, procErr))
	}
	switch {
	case slavesErr == nil:
		b.Members = strings.Fields(slaves)
	case procErr == nil:
		b.Members = proc.Members
	default:
		// Members' master links stand in (linkUpperLower).
		r.miss("bonding/slaves", slavesErr)
	}
	return b
}

func ueventBond(fsys fs.FS, dir string) bool {
	s, err := readString(fsys, path.Join(dir, "uevent"))
	return err == nil && slices.Contains(strings.Fields(s), "DEVTYPE=bond")
}

// procBondModes maps /proc/net/bonding's "Bonding Mode:" text to the mode
// names sysfs uses (drivers/net/bonding/bond_main.c, bond_mode_name).
var procBondModes = []struct{ prefix, mode string }{
	{"load balancing (round-robin)", "balance-rr"},
	{"fault-tolerance (active-backup)", "active-backup"},
	{"load balancing (xor)", "balance-xor"},
	{"fault-tolerance (broadcast)", "broadcast"},
	{"IEEE 802.3ad Dynamic link aggregation", "802.3ad"},
	{"transmit load balancing", "balance-tlb"},
	{"adaptive load balancing", "balance-alb"},
}

// readProcBond is the fallback for a bond whose sysfs bonding/ directory is
// missing (sysfs without the bonding attributes, or a partial copy).
func readProcBond(fsys fs.FS, name string) (*Bond, error) {
	data, err := fs.ReadFile(fsys, path.Join("proc/net/bonding", name))
	if err != nil {
		return nil, err
	}
	return parseProcBond(string(data))
}

func parseProcBond(text string) (*Bond, error) {
	b := &Bond{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "Bonding Mode":
			for _, m := range procBondModes {
				if strings.HasPrefix(v, m.prefix) {
					b.Mode = m.mode
				}
			}
			if b.Mode == "" {
				return nil, fmt.Errorf("unknown bonding mode %q", v)
			}
		case "Slave Interface":
			b.Members = append(b.Members, v)
		}
	}
	if b.Mode == "" {
		return nil, errors.New("no \"Bonding Mode:\" line")
	}
	return b, nil
}

// readDefaultRoute picks the lowest-metric default route from
// /proc/net/route, whose columns are hex in host byte order.
func readDefaultRoute(fsys fs.FS) (string, error) {
	data, err := fs.ReadFile(fsys, "proc/net/route")
	if err != nil {
		return "", err
	}
	best, bestMetric := "", uint64(1<<63)
	for i, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) < 8 {
			continue
		}
		flags, err1 := strconv.ParseUint(f[3], 16, 32)
		metric, err2 := strconv.ParseUint(f[6], 10, 32)
		if err1 != nil || err2 != nil {
			return "", fmt.Errorf("/proc/net/route line %d: malformed %q", i+1, line)
		}
		const rtfUp = 0x1
		if f[1] == "00000000" && f[7] == "00000000" && flags&rtfUp != 0 && metric < bestMetric {
			best, bestMetric = f[0], metric
		}
	}
	return best, nil
}

func readInventory(fsys fs.FS) (map[string]string, error) {
	data, err := fs.ReadFile(fsys, "etc/xensource-inventory")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	inv := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok || strings.HasPrefix(k, "#") {
			continue
		}
		inv[k] = strings.Trim(v, `'"`)
	}
	return inv, nil
}

func isDir(fsys fs.FS, name string) bool {
	st, err := fs.Stat(fsys, name)
	return err == nil && st.IsDir()
}

func readString(fsys fs.FS, name string) (string, error) {
	b, err := fs.ReadFile(fsys, name)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func readInt(fsys fs.FS, name string) (int, error) {
	s, err := readString(fsys, name)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("/%s: not a number: %q", name, s)
	}
	return n, nil
}
