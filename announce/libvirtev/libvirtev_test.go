package libvirtev

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"
	"go.uber.org/zap"
)

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		event, detail int32
		want          string
		ok            bool
	}{
		{4, 1, DetailMigrated, true}, // RESUMED MIGRATED
		{4, 3, DetailPostcopy, true}, // RESUMED POSTCOPY
		{4, 0, "", false},            // RESUMED UNPAUSED: virsh resume
		{4, 2, "", false},            // RESUMED FROM_SNAPSHOT
		{4, 4, "", false},            // RESUMED POSTCOPY_FAILED
		{2, 1, "", false},            // STARTED MIGRATED: QEMU is not running the guest yet
		{3, 1, "", false},            // SUSPENDED MIGRATED: the source side
	} {
		got, ok := Classify(c.event, c.detail)
		if got != c.want || ok != c.ok {
			t.Errorf("Classify(%d, %d) = %q, %v; want %q, %v", c.event, c.detail, got, ok, c.want, c.ok)
		}
	}
}

func TestParseEndpoint(t *testing.T) {
	for _, c := range []struct {
		in, socket, uri, err string
	}{
		{"", DefaultSocket, "qemu:///system", ""},
		{"qemu:///system", DefaultSocket, "qemu:///system", ""},
		{"/tmp/x/libvirt-sock", "/tmp/x/libvirt-sock", "qemu:///system", ""},
		{"qemu+unix:///system?socket=/tmp/s", "/tmp/s", "qemu:///system", ""},
		{"test+unix:///default?socket=/tmp/t", "/tmp/t", "test:///default", ""},
		{"qemu+tcp://host/system", "", "", "not local"},
		{"qemu://host/system", "", "", "not local"},
		{"::", "", "", "malformed libvirt URI"},
	} {
		ep, err := parseEndpoint(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("parseEndpoint(%q) error = %v, want %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || ep.socket != c.socket || string(ep.uri) != c.uri {
			t.Errorf("parseEndpoint(%q) = %+v, %v; want socket %s uri %s", c.in, ep, err, c.socket, c.uri)
		}
	}
}

// liveXML is trimmed from what libvirt 9.0 returned here for a running
// domain with a bridged NIC, with a disk whose <target dev> must not be
// taken for a tap.
const liveXML = `<domain type='qemu' id='1'>
  <name>g1</name>
  <devices>
    <disk type='file' device='disk'><target dev='vda' bus='virtio'/></disk>
    <interface type='bridge'>
      <mac address='52:54:00:aa:bb:01'/>
      <source bridge='br0'/>
      <target dev='vnet0'/>
      <model type='e1000'/>
      <alias name='net0'/>
    </interface>
    <interface type="network">
      <mac address="52:54:00:aa:bb:02"/>
      <source network="default" bridge="virbr0"/>
      <target dev="vnet1"/>
    </interface>
    <hostdev mode='subsystem' type='pci'/>
  </devices>
</domain>`

func TestInterfacesFromXML(t *testing.T) {
	check := func(name string, b string) {
		ifs, err := InterfacesFromXML([]byte(b))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(ifs) != 2 || ifs[0].Dev != "vnet0" || ifs[0].MAC.String() != "52:54:00:aa:bb:01" || ifs[0].Bridge != "br0" ||
			ifs[1].Dev != "vnet1" || ifs[1].MAC.String() != "52:54:00:aa:bb:02" || ifs[1].Bridge != "virbr0" {
			t.Fatalf("%s: got %+v", name, ifs)
		}
	}
	check("domain", liveXML)
	check("domstatus", "<domstatus state='running' reason='migrated' pid='42'>"+liveXML+"</domstatus>")

	inactive := `<domain><devices><interface type='bridge'><mac address='52:54:00:aa:bb:01'/><source bridge='br0'/></interface></devices></domain>`
	if ifs, err := InterfacesFromXML([]byte(inactive)); err != nil || len(ifs) != 0 {
		t.Errorf("inactive definition: got %v, %v; want no taps", ifs, err)
	}
	for _, bad := range []string{
		"",
		"<domain><devices><interface>",
		"not xml at all",
		"<network><name>x</name></network>",
		`<domain><devices><interface><mac address='01:00:5e:00:00:01'/><target dev='vnet0'/></interface></devices></domain>`,
		`<domain><devices><interface><mac address='zz'/><target dev='vnet0'/></interface></devices></domain>`,
	} {
		if ifs, err := InterfacesFromXML([]byte(bad)); err == nil {
			t.Errorf("InterfacesFromXML(%q) = %v, want an error", bad, ifs)
		} else if strings.Contains(err.Error(), "\n") {
			t.Errorf("error for %q is not one line: %q", bad, err)
		}
	}
}

func TestDomainInterfacesNoLibvirtd(t *testing.T) {
	sock := t.TempDir() + "/libvirt-sock"
	_, err := DomainInterfaces(context.Background(), sock, "g1")
	if err == nil || !strings.HasPrefix(err.Error(), "libvirt not reachable at "+sock) {
		t.Fatalf("err = %v, want libvirt not reachable at %s", err, sock)
	}
}

func TestWatcherBadURI(t *testing.T) {
	err := New("qemu+ssh://elsewhere/system", zap.NewNop()).Run(context.Background(), func(Event) {})
	if err == nil || !strings.Contains(err.Error(), "not local") {
		t.Fatalf("Run = %v, want a not-local error", err)
	}
}

// With no libvirtd the watcher keeps trying quietly until told to stop.
func TestWatcherNoLibvirtdUntilCancel(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 1200*time.Millisecond)
	defer cancel()
	w := New(t.TempDir()+"/libvirt-sock", zap.NewNop())
	start := time.Now()
	err := w.Run(ctx, func(Event) { t.Error("event without libvirtd") })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run = %v, want the context's deadline", err)
	}
	// Only bounds the wait: a Run that ignored ctx would not return at all
	// (its backoff grows to 30 s); a loaded machine may take a while.
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("Run took %v to notice cancellation", d)
	}
}

func TestFormatUUID(t *testing.T) {
	u := libvirt.UUID{0xad, 0xb9, 0x5d, 0x90, 0xbd, 0xd4, 0x49, 0xcf, 0x8b, 0xd6, 0x98, 0x0d, 0x72, 0xb0, 0x4e, 0xa3}
	if got := formatUUID(u); got != "adb95d90-bdd4-49cf-8bd6-980d72b04ea3" {
		t.Fatal(got)
	}
}
