package doctor

import (
	"os"
	"reflect"
	"testing"
)

func TestReadHostHealthy(t *testing.T) {
	h, err := ReadHost(os.DirFS("testdata/healthy"))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := h.Links["bonding_masters"]; ok {
		t.Error("bonding_masters, a plain file in /sys/class/net, was read as a device")
	}
	br := h.Links["xenbr0"]
	if br == nil || br.Bridge == nil {
		t.Fatalf("xenbr0 not read as a bridge: %+v", br)
	}
	if want := []string{"eth0", "tap1.0", "vif1.0"}; !reflect.DeepEqual(br.Bridge.Ports, want) {
		t.Errorf("xenbr0 ports %v, want %v", br.Bridge.Ports, want)
	}
	if br.Bridge.ForwardDelay != 1500 || br.Bridge.AgeingTime != 30000 || br.Bridge.MulticastSnooping != 1 {
		t.Errorf("xenbr0 bridge attributes %+v", br.Bridge)
	}
	if l := h.Links["vif1.0"]; l.Master != "xenbr0" || l.Port == nil || l.Port.Learning != 1 || l.Port.State != 3 {
		t.Errorf("vif1.0 %+v port %+v", l, l.Port)
	}
	b := h.Links["bond0"]
	if b.Bond == nil || b.Bond.Mode != "active-backup" || !reflect.DeepEqual(b.Bond.Members, []string{"eth1", "eth2"}) {
		t.Errorf("bond0 bond %+v", b.Bond)
	}
	if b.Master != "xapi1" {
		t.Errorf("bond0 master %q, want xapi1", b.Master)
	}
	// eth1's master link points through ../../../../virtual/net/bond0.
	if m := h.Links["eth1"].Master; m != "bond0" {
		t.Errorf("eth1 master %q, want bond0", m)
	}
	if got := h.Links["bond1"].MTU; got != 9000 {
		t.Errorf("bond1 MTU %d", got)
	}
	if h.DefaultRoute != "xenbr0" {
		t.Errorf("default route via %q, want xenbr0", h.DefaultRoute)
	}
	if h.Inventory["MANAGEMENT_INTERFACE"] != "xenbr0" {
		t.Errorf("inventory %v", h.Inventory)
	}
}

func TestReadHostFollowsVLANToBond(t *testing.T) {
	h, err := ReadHost(os.DirFS("testdata/bridge-on-unsafe-bond"))
	if err != nil {
		t.Fatal(err)
	}
	c := &checker{h: h, o: &Options{VMPortGlobs: DefaultVMPortGlobs}}
	bonds := c.bondsBelow("br100")
	if len(bonds) != 1 || bonds[0].Name != "bond2" {
		t.Fatalf("bonds below br100: %v", bonds)
	}
}

func TestParseProcBond(t *testing.T) {
	data, err := os.ReadFile("testdata/bridge-on-unsafe-bond/proc/net/bonding/bond1")
	if err != nil {
		t.Fatal(err)
	}
	b, err := parseProcBond(string(data))
	if err != nil {
		t.Fatal(err)
	}
	if b.Mode != "balance-alb" || !reflect.DeepEqual(b.Members, []string{"eth2", "eth3"}) {
		t.Errorf("got %+v", b)
	}
	// Real hosts append "(fail_over_mac active)" and the like.
	b, err = parseProcBond("Bonding Mode: fault-tolerance (active-backup) (fail_over_mac active)\n\nSlave Interface: eth0\n")
	if err != nil || b.Mode != "active-backup" {
		t.Errorf("got %+v, %v", b, err)
	}
	if _, err := parseProcBond("Bonding Mode: telepathy\n"); err == nil {
		t.Error("unknown mode accepted")
	}
}

func TestDefaultRouteLowestMetric(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(dir+"/proc/net", 0o755)
	os.MkdirAll(dir+"/sys/class/net", 0o755)
	route := "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n" +
		"eth1\t00000000\t0101A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n" +
		"eth9\t00000000\t0101A8C0\t0002\t0\t0\t0\t00000000\t0\t0\t0\n" + // not RTF_UP
		"eth0\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n" +
		"eth2\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
	os.WriteFile(dir+"/proc/net/route", []byte(route), 0o644)
	h, err := ReadHost(os.DirFS(dir))
	if err != nil {
		t.Fatal(err)
	}
	if h.DefaultRoute != "eth0" {
		t.Errorf("default route %q, want eth0", h.DefaultRoute)
	}
}
