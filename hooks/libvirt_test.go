package hooks_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// libvirt runs /etc/libvirt/hooks/qemu.d/* as "<script> <domain> <op>
// <sub-op> <extra>" with the domain XML on stdin, reading stdout and
// stderr to EOF. On a migration's destination (observed with libvirt 9.0
// in TestLibvirtHookRealLibvirtd): migrate begin, prepare begin, start
// begin, started begin; on a plain start the same without migrate.

// sourceXML is the shape of the XML at "migrate begin": the definition as
// the source sends it, its tap named for the source host.
const sourceXML = `<domain type='qemu'>
  <name>web1</name>
  <uuid>3a1f0e52-5c4d-4b7a-9e6f-1d2c3b4a5f60</uuid>
  <devices>
    <disk type='file' device='disk'>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <mac address='52:54:00:aa:bb:01'/>
      <source bridge='br0'/>
      <target dev='vnet9'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>
`

// liveXML is the shape of the XML at "started begin" on the destination:
// the taps created here.
const liveXML = `<domain type='qemu' id='4'>
  <name>web1</name>
  <uuid>3a1f0e52-5c4d-4b7a-9e6f-1d2c3b4a5f60</uuid>
  <devices>
    <disk type='file' device='disk'>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <mac address='52:54:00:aa:bb:01'/>
      <source bridge='br0'/>
      <target dev='vnet3'/>
      <model type='virtio'/>
      <alias name='net0'/>
    </interface>
    <interface type="network">
      <mac address="52:54:00:aa:bb:02"/>
      <source network="default" bridge="virbr0"/>
      <target dev="vnet4"/>
    </interface>
  </devices>
</domain>
`

type lv struct {
	*lab
	hook  string
	state string
}

func newLV(t *testing.T, mode announceMode, daemonActive bool) *lv {
	t.Helper()
	l := newLab(t, mode, daemonActive)
	return &lv{lab: l, hook: script(t, "libvirt-qemu"), state: filepath.Join(l.dir, "state")}
}

// call runs the hook for one operation and checks what libvirt needs of
// it: exit 0, quickly, and nothing on stdout (which "migrate begin" would
// take as a replacement domain XML).
func (v *lv) call(t *testing.T, xml string, args ...string) result {
	t.Helper()
	r := v.run(append([]string{v.hook}, args...), []string{"SELFANNOUNCE_STATE_DIR=" + v.state}, xml)
	expectOK(t, r)
	if r.stdout != "" {
		t.Fatalf("hook %v wrote %q on stdout", args, r.stdout)
	}
	return r
}

func (v *lv) incoming(t *testing.T, name, live string) {
	t.Helper()
	v.call(t, sourceXML, name, "migrate", "begin", "-")
	v.call(t, sourceXML, name, "prepare", "begin", "-")
	v.call(t, sourceXML, name, "start", "begin", "-")
	v.call(t, live, name, "started", "begin", "-")
}

func TestLibvirtHook(t *testing.T) {
	wantBoth := [][]string{
		{"--vif", "vnet3", "--mac", "52:54:00:aa:bb:01", "--wait-ready=600s", "--log-format=console"},
		{"--vif", "vnet4", "--mac", "52:54:00:aa:bb:02", "--wait-ready=600s", "--log-format=console"},
	}

	t.Run("incoming migration", func(t *testing.T) {
		v := newLV(t, hang, false)
		v.incoming(t, "web1", liveXML)
		argvIs(t, v.launches(2), wantBoth...)
		v.checkDetached()
		v.syslog.expect(t, "libvirt: domain web1: incoming migration")
		v.syslog.expect(t, "handed vnet3 (52:54:00:aa:bb:01)")
		// The arrival was consumed: a later restart of the domain here is a
		// plain start.
		v.call(t, liveXML, "web1", "started", "begin", "-")
		argvIs(t, v.launches(2), wantBoth...)
	})

	t.Run("XML on one line", func(t *testing.T) {
		v := newLV(t, hang, false)
		v.incoming(t, "web1", strings.Join(strings.Fields(liveXML), " "))
		argvIs(t, v.launches(2), wantBoth...)
	})

	t.Run("plain start", func(t *testing.T) {
		v := newLV(t, hang, false)
		v.call(t, sourceXML, "web1", "prepare", "begin", "-")
		v.call(t, sourceXML, "web1", "start", "begin", "-")
		v.call(t, liveXML, "web1", "started", "begin", "-")
		argvIs(t, v.launches(0))
	})

	t.Run("failed incoming migration", func(t *testing.T) {
		v := newLV(t, hang, false)
		v.call(t, sourceXML, "web1", "migrate", "begin", "-")
		v.call(t, liveXML, "web1", "stopped", "end", "-")
		v.call(t, liveXML, "web1", "release", "end", "-")
		v.call(t, liveXML, "web1", "started", "begin", "-")
		argvIs(t, v.launches(0))
	})

	t.Run("migrations of two domains", func(t *testing.T) {
		v := newLV(t, hang, false)
		v.call(t, sourceXML, "web1", "migrate", "begin", "-")
		v.call(t, liveXML, "web 2/odd", "started", "begin", "-")
		argvIs(t, v.launches(0))
		v.call(t, liveXML, "web1", "started", "begin", "-")
		argvIs(t, v.launches(2), wantBoth...)
	})

	t.Run("daemon active", func(t *testing.T) {
		v := newLV(t, hang, true)
		v.incoming(t, "web1", liveXML)
		argvIs(t, v.launches(0))
		v.syslog.expect(t, "domain web1: arrival left to the selfannounce daemon")
	})

	t.Run("announce fails", func(t *testing.T) {
		v := newLV(t, fail, false)
		v.incoming(t, "web1", liveXML)
		argvIs(t, v.launches(2), wantBoth...)
		v.syslog.expect(t, "announce: no such port")
	})

	t.Run("state dir not writable", func(t *testing.T) {
		v := newLV(t, hang, false)
		v.state = "/proc/selfannounce-cannot-exist"
		v.incoming(t, "web1", liveXML)
		argvIs(t, v.launches(0))
		v.syslog.expect(t, "cannot record it")
	})

	for name, xml := range map[string]string{
		"empty stdin":     "",
		"not XML":         "this is not xml\x00\xff",
		"truncated":       liveXML[:strings.Index(liveXML, "<target dev='vnet3'")],
		"no interfaces":   "<domain><devices><disk><target dev='vda'/></disk></devices></domain>",
		"glob and shell":  "<domain><devices><interface><mac address='*'/><target dev='$(reboot)'/></interface></devices></domain>",
		"multicast-ish":   "<domain><devices><interface><mac address='52:54:00:aa:bb'/><target dev='vnet0'/></interface></devices></domain>",
		"over-long dev":   "<domain><devices><interface><mac address='52:54:00:aa:bb:01'/><target dev='vnet0123456789012'/></interface></devices></domain>",
		"unclosed quotes": "<domain><devices><interface><mac address='52:54:00:aa:bb:01/><target dev=\"vnet0/></interface>",
	} {
		t.Run("malformed XML/"+name, func(t *testing.T) {
			v := newLV(t, hang, false)
			v.incoming(t, "web1", xml)
			argvIs(t, v.launches(0))
			v.syslog.expect(t, "domain web1: no interface with a host device in the domain XML on stdin; nothing to announce")
		})
	}

	t.Run("malformed XML/one good interface of two", func(t *testing.T) {
		v := newLV(t, hang, false)
		xml := strings.Replace(liveXML, "52:54:00:aa:bb:02", "52:54:00:aa:bb:0z", 1)
		v.incoming(t, "web1", xml)
		argvIs(t, v.launches(1), wantBoth[0])
		v.syslog.expect(t, "ignoring interface with malformed target dev or MAC")
	})

	for name, args := range map[string][]string{
		"no arguments":    {},
		"domain only":     {"web1"},
		"no suboperation": {"web1", "started"},
		"empty domain":    {"", "started", "begin", "-"},
	} {
		t.Run("malformed arguments/"+name, func(t *testing.T) {
			v := newLV(t, hang, false)
			v.call(t, liveXML, args...)
			argvIs(t, v.launches(0))
			v.syslog.expect(t, "malformed arguments")
		})
	}

	t.Run("unknown operations", func(t *testing.T) {
		v := newLV(t, hang, false)
		for _, op := range [][]string{{"reconnect", "begin"}, {"attach", "begin"}, {"restore", "begin"}, {"stopped", "end"}, {"future-op", "whatever"}} {
			v.call(t, liveXML, "web1", op[0], op[1], "-")
		}
		argvIs(t, v.launches(0))
	})
}

// Keep the directory listing honest: every hook the docs name exists and is
// executable, and the sh scripts parse under dash (Debian's /bin/sh).
func TestHooksParse(t *testing.T) {
	for _, h := range []string{"xapi-vm-post-migrate", "libvirt-qemu", "xen-vif-post.hook"} {
		p := script(t, h)
		for _, sh := range []string{"dash", "bash"} {
			if _, err := os.Stat("/bin/" + sh); err != nil {
				continue
			}
			l := &lab{t: t}
			r := l.run([]string{"/bin/" + sh, "-n", p}, nil, "")
			if r.code != 0 {
				t.Errorf("%s -n %s: %s", sh, h, r.stderr)
			}
		}
	}
}
