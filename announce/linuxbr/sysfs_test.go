package linuxbr

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
)

// writeSysfs lays h out as the kernel does under /sys: each link a directory
// in devices/virtual/net linked from class/net, bridges with bridge/ and
// brif/, ports with brport/ and a master symlink, bonds with bonding/, a
// DEVTYPE in uevent for the kinds that have one. Ports' VLAN tables are not
// in sysfs; the returned host serves them from h.
func writeSysfs(t *testing.T, h StaticHost, filteringFile bool) *SysfsHost {
	t.Helper()
	root := t.TempDir()
	dev := func(name string, elems ...string) string {
		return filepath.Join(append([]string{root, "devices", "virtual", "net", name}, elems...)...)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	write := func(path, content string) {
		must(os.MkdirAll(filepath.Dir(path), 0o755))
		must(os.WriteFile(path, []byte(content), 0o644))
	}
	must(os.MkdirAll(filepath.Join(root, "class", "net"), 0o755))
	kinds := map[string]string{}
	for _, l := range h {
		kinds[l.Name] = l.Kind
		ue := fmt.Sprintf("INTERFACE=%s\nIFINDEX=%d\n", l.Name, l.Index)
		switch l.Kind {
		case KindBridge, KindBond, KindVLAN, KindOpenvSwitch:
			ue = "DEVTYPE=" + l.Kind + "\n" + ue
		case KindTun:
			write(dev(l.Name, "tun_flags"), "0x1002\n")
		}
		write(dev(l.Name, "uevent"), ue)
		write(dev(l.Name, "ifindex"), strconv.Itoa(l.Index)+"\n")
		write(dev(l.Name, "address"), l.MAC.String()+"\n")
		must(os.Symlink(filepath.Join("..", "..", "devices", "virtual", "net", l.Name), filepath.Join(root, "class", "net", l.Name)))
		switch l.Kind {
		case KindBridge:
			must(os.MkdirAll(dev(l.Name, "brif"), 0o755))
			if filteringFile {
				v := "0\n"
				if l.VLANFiltering {
					v = "1\n"
				}
				write(dev(l.Name, "bridge", "vlan_filtering"), v)
			}
			write(dev(l.Name, "bridge", "stp_state"), "0\n")
		case KindBond:
			write(dev(l.Name, "bonding", "mode"), "active-backup 1\n")
		}
	}
	for _, l := range h {
		if l.Master == "" {
			continue
		}
		must(os.Symlink("../"+l.Master, dev(l.Name, "master")))
		must(os.Symlink("../"+l.Master, dev(l.Name, "upper_"+l.Master)))
		must(os.Symlink("../"+l.Name, dev(l.Master, "lower_"+l.Name)))
		switch kinds[l.Master] {
		case KindBridge:
			write(dev(l.Name, "brport", "state"), "3\n")
			must(os.Symlink("../../"+l.Master, dev(l.Name, "brport", "bridge")))
			must(os.Symlink("../../"+l.Name+"/brport", dev(l.Master, "brif", l.Name)))
		case KindBond:
			write(dev(l.Name, "bonding_slave", "state"), "active\n")
		}
	}
	return &SysfsHost{
		Root: root,
		VLANTable: func(ifindex int) ([]VLAN, error) {
			for _, l := range h {
				if l.Index == ifindex {
					return l.VLANs, nil
				}
			}
			return nil, fmt.Errorf("no link with ifindex %d", ifindex)
		},
		// sysfs leaves veths untyped; netlink would say "veth".
		LinkKind: func(ifindex int) (string, error) {
			for _, l := range h {
				if l.Index == ifindex {
					return l.Kind, nil
				}
			}
			return "", nil
		},
	}
}

// The sysfs reader must see exactly what the literal description says.
func TestSysfsResolveMatchesStatic(t *testing.T) {
	for name, h := range map[string]StaticHost{"xen": xenHost(), "vlan": vlanHost()} {
		s := writeSysfs(t, h, true)
		for _, l := range append(h, StaticLink{Link: Link{Name: "nosuch0"}}) {
			want, wantErr := Resolve(h, l.Name, nil)
			got, gotErr := Resolve(s, l.Name, nil)
			if fmt.Sprint(gotErr) != fmt.Sprint(wantErr) || !reflect.DeepEqual(got, want) {
				t.Errorf("%s/%s: sysfs gave %+v, %v; static %+v, %v", name, l.Name, got, gotErr, want, wantErr)
			}
		}
	}
}

func TestSysfsHost(t *testing.T) {
	s := writeSysfs(t, vlanHost(), true)
	l, err := s.LinkByIndex(5)
	if err != nil || l.Name != "eth5.7" || l.MAC.String() != "02:00:00:00:00:05" {
		t.Errorf("LinkByIndex(5) = %+v, %v", l, err)
	}
	if _, err := s.LinkByIndex(99); !errors.Is(err, ErrNotFound) {
		t.Errorf("LinkByIndex(99): %v", err)
	}
	for name, want := range map[string]string{"br0": KindBridge, "bond0": KindBond, "eth5.7": KindVLAN, "vnet0": KindTun, "eth3": KindVeth} {
		if k, err := s.Kind(name); err != nil || k != want {
			t.Errorf("Kind(%s) = %q, %v; want %q", name, k, err, want)
		}
	}
	if v, err := s.IsVLANDevice("eth5.7"); err != nil || !v {
		t.Errorf("IsVLANDevice(eth5.7) = %v, %v", v, err)
	}
	ports, err := s.BridgePorts("br0")
	if want := []string{"bond0", "eth3", "eth4", "eth5.7", "vnet0", "vnet1", "vnet2"}; err != nil || !reflect.DeepEqual(ports, want) {
		t.Errorf("BridgePorts(br0) = %v, %v", ports, err)
	}
	if _, err := s.BridgePorts("eth3"); err == nil || err.Error() != `interface "eth3" is not a bridge` {
		t.Errorf("BridgePorts(eth3): %v", err)
	}
	if m, err := s.Master("eth3"); err != nil || m != "br0" {
		t.Errorf("Master(eth3) = %q, %v", m, err)
	}
	if m, err := s.Master("br0"); err != nil || m != "" {
		t.Errorf("Master(br0) = %q, %v", m, err)
	}
	if _, err := s.Master("../br0"); err == nil {
		t.Error("Master accepted a name with a slash")
	}
}

// Kernels without CONFIG_BRIDGE_VLAN_FILTERING (this one) have no
// bridge/vlan_filtering file: such a bridge never filters.
func TestSysfsNoVLANFilteringFile(t *testing.T) {
	s := writeSysfs(t, vlanHost(), false)
	if f, err := s.VLANFiltering("br0"); err != nil || f {
		t.Fatalf("VLANFiltering = %v, %v", f, err)
	}
	p, err := Resolve(s, "vnet2", nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.VLAN != 0 || len(p.Uplinks) != 4 {
		t.Fatalf("got %+v", p)
	}
}
