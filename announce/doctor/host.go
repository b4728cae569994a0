package doctor

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
)

// Host is what the doctor knows about a host's network setup, read from
// /sys, /proc and /etc under a root so fixture trees stand in for real hosts.
type Host struct {
	Links map[string]*Link
	// DefaultRoute is the interface of the lowest-metric IPv4 default route.
	DefaultRoute string
	// Inventory holds /etc/xensource-inventory's KEY='value' pairs; nil when
	// the file does not exist, which is how a XenServer host is told apart.
	Inventory map[string]string
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

// Bond holds a bond's mode (the kernel's name, e.g. "active-backup") and members.
type Bond struct {
	Mode    string
	Members []string
}

// ReadHost reads the host model from fsys, which is rooted where / would be.
func ReadHost(fsys fs.FS) (*Host, error) {
	const classNet = "sys/class/net"
	ents, err := fs.ReadDir(fsys, classNet)
	if err != nil {
		return nil, fmt.Errorf("cannot list network devices: %w", err)
	}
	h := &Host{Links: map[string]*Link{}}
	for _, e := range ents {
		dir := path.Join(classNet, e.Name())
		// Entries are symlinks into /sys/devices; Stat follows them. Plain
		// files such as bonding_masters are not devices.
		if st, err := fs.Stat(fsys, dir); err != nil || !st.IsDir() {
			continue
		}
		l, err := readLink(fsys, dir, e.Name())
		if err != nil {
			return nil, err
		}
		h.Links[l.Name] = l
	}
	h.DefaultRoute, err = readDefaultRoute(fsys)
	if err != nil {
		return nil, err
	}
	h.Inventory, err = readInventory(fsys)
	if err != nil {
		return nil, err
	}
	return h, nil
}

func readLink(fsys fs.FS, dir, name string) (*Link, error) {
	l := &Link{Name: name}
	var err error
	if l.MTU, err = readInt(fsys, path.Join(dir, "mtu")); err != nil {
		return nil, err
	}
	l.Operstate, _ = readString(fsys, path.Join(dir, "operstate"))
	if target, err := fs.ReadLink(fsys, path.Join(dir, "master")); err == nil {
		l.Master = path.Base(target)
	}
	ents, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, err
	}
	lowers := map[string]bool{}
	for _, e := range ents {
		if n, ok := strings.CutPrefix(e.Name(), "lower_"); ok {
			lowers[n] = true
		}
	}
	if isDir(fsys, path.Join(dir, "bridge")) {
		b := &Bridge{}
		for _, f := range []struct {
			name string
			dst  *int
		}{
			{"stp_state", &b.STPState},
			{"forward_delay", &b.ForwardDelay},
			{"ageing_time", &b.AgeingTime},
			{"multicast_snooping", &b.MulticastSnooping},
			{"multicast_querier", &b.MulticastQuerier},
			{"multicast_query_interval", &b.MulticastQueryInterval},
		} {
			if *f.dst, err = readInt(fsys, path.Join(dir, "bridge", f.name)); err != nil {
				return nil, err
			}
		}
		ports, err := fs.ReadDir(fsys, path.Join(dir, "brif"))
		if err != nil {
			return nil, fmt.Errorf("bridge %s: %w", name, err)
		}
		for _, p := range ports {
			b.Ports = append(b.Ports, p.Name())
			lowers[p.Name()] = true
		}
		l.Bridge = b
	}
	if isDir(fsys, path.Join(dir, "brport")) {
		p := &BridgePort{}
		if p.Learning, err = readInt(fsys, path.Join(dir, "brport", "learning")); err != nil {
			return nil, err
		}
		if p.State, err = readInt(fsys, path.Join(dir, "brport", "state")); err != nil {
			return nil, err
		}
		l.Port = p
	}
	if isDir(fsys, path.Join(dir, "bonding")) {
		mode, err := readString(fsys, path.Join(dir, "bonding", "mode"))
		if err != nil {
			return nil, err
		}
		slaves, err := readString(fsys, path.Join(dir, "bonding", "slaves"))
		if err != nil {
			return nil, err
		}
		// "balance-rr 0": the name, then the number.
		l.Bond = &Bond{Mode: strings.Fields(mode + " ?")[0], Members: strings.Fields(slaves)}
	} else if b, err := readProcBond(fsys, name); err == nil {
		l.Bond = b
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
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
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
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
