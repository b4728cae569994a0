package hooks_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// vifCaller is what happens around a vif-post.d hook in Xen's hotplug
// scripts (tools/hotplug/Linux: xen-hotplug-common.sh, vif-common.sh,
// vif-bridge), reduced to the parts that decide whether a hook can hurt
// the hotplug: bash, "trap sigerr ERR" (a failing command marks the vif's
// hotplug as failed), the command and key=value arguments libxl passes,
// $dev chosen from $vif or $INTERFACE by type_if, the hooks SOURCED in
// call_hooks, and the work the script still has to do afterwards.
const vifCaller = `#!/bin/bash
sigerr() { echo "HOTPLUG-FAILED"; exit 1; }
trap sigerr ERR
if [ -n "$ERRTRACE" ]; then set -E; fi
for arg in "$@"; do
  case "$arg" in
    *=*) eval "$arg" ;;
    *) command="$arg" ;;
  esac
done
: ${type_if:=vif}
case "$type_if" in
  vif) dev=$vif ;;
  tap) dev=$INTERFACE ;;
esac
for f in "$HOOK_DIR"/*.hook; do
  if [ -x "$f" ]; then . "$f"; fi
done
echo "after-hooks command=$command dev=$dev type_if=$type_if args=$*"
if declare -F | grep -q selfannounce; then echo "LEAKED-FUNCTION"; fi
if set | grep -q '^sa_'; then echo "LEAKED-VARIABLE"; fi
echo "HOTPLUG-CONNECTED"
`

type xl struct {
	*lab
	caller string
}

func newXL(t *testing.T, mode announceMode, daemonActive bool) *xl {
	t.Helper()
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("needs bash, which Xen's hotplug scripts run under")
	}
	l := newLab(t, mode, daemonActive)
	hookDir := filepath.Join(l.dir, "vif-post.d")
	if err := os.Mkdir(hookDir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(script(t, "xen-vif-post.hook"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(hookDir, "selfannounce.hook"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	caller := filepath.Join(l.dir, "vif-bridge")
	if err := os.WriteFile(caller, []byte(vifCaller), 0o755); err != nil {
		t.Fatal(err)
	}
	return &xl{lab: l, caller: caller}
}

// plug runs the vif script as libxl does (libxl_linux.c): argv
// "<script> online type_if=vif" for a PV vif, "<script> add type_if=tap"
// for an emulated NIC's tap, environment script, XENBUS_TYPE, XENBUS_PATH,
// XENBUS_BASE_PATH, netdev, vif, and INTERFACE for emulated NICs.
func (x *xl) plug(t *testing.T, action, typeIf, vif string, extraEnv ...string) result {
	t.Helper()
	env := append([]string{
		"HOOK_DIR=" + filepath.Join(x.dir, "vif-post.d"),
		"script=/etc/xen/scripts/vif-bridge",
		"XENBUS_TYPE=vif",
		"XENBUS_PATH=backend/vif/7/0",
		"XENBUS_BASE_PATH=backend",
		"netdev=",
		"vif=" + vif,
	}, extraEnv...)
	if typeIf == "tap" {
		env = append(env, "INTERFACE="+vif+"-emu")
	}
	r := x.run([]string{x.caller, action, "type_if=" + typeIf}, env, "")
	expectOK(t, r)
	if !strings.Contains(r.stdout, "HOTPLUG-CONNECTED") || strings.Contains(r.stdout, "HOTPLUG-FAILED") ||
		strings.Contains(r.stdout, "LEAKED") {
		t.Fatalf("the vif script did not finish cleanly after the hook:\n%s%s", r.stdout, r.stderr)
	}
	wantDev := vif
	if typeIf == "tap" {
		wantDev = vif + "-emu"
	}
	if !strings.Contains(r.stdout, "command="+action+" dev="+wantDev+" type_if="+typeIf+" args="+action+" type_if="+typeIf+"\n") {
		t.Fatalf("the hook changed its caller's variables or arguments:\n%s", r.stdout)
	}
	return r
}

func TestXLHook(t *testing.T) {
	t.Run("vif online", func(t *testing.T) {
		x := newXL(t, hang, false)
		x.plug(t, "online", "vif", "vif7.0")
		argvIs(t, x.launches(1), []string{"--vif", "vif7.0", "--wait-ready=600s", "--log-format=console"})
		x.checkDetached()
		x.syslog.expect(t, "xl: vif7.0 online: handed to announce")
	})

	t.Run("vif online with xenstore", func(t *testing.T) {
		x := newXL(t, hang, false)
		// xenstored cannot run without the hypervisor; this xenstore-read
		// answers the one key the hook asks for, and records the path.
		x.write("xenstore-read", "#!/bin/sh\necho \"$1\" > "+x.rec+"/xenstore\n[ \"$1\" = backend/vif/7/0/mac ] && echo 00:16:3e:12:34:56\n")
		x.plug(t, "online", "vif", "vif7.0")
		argvIs(t, x.launches(1), []string{"--vif", "vif7.0", "--mac", "00:16:3e:12:34:56", "--wait-ready=600s", "--log-format=console"})
	})

	t.Run("xenstore answers garbage", func(t *testing.T) {
		x := newXL(t, hang, false)
		x.write("xenstore-read", "#!/bin/sh\necho 'not a mac; reboot'\n")
		x.plug(t, "online", "vif", "vif7.0")
		argvIs(t, x.launches(1), []string{"--vif", "vif7.0", "--wait-ready=600s", "--log-format=console"})
	})

	t.Run("tap add", func(t *testing.T) {
		x := newXL(t, hang, false)
		x.plug(t, "add", "tap", "vif7.0")
		argvIs(t, x.launches(1), []string{"--vif", "vif7.0-emu", "--wait-ready=600s", "--log-format=console"})
	})

	for _, c := range []struct{ action, typeIf string }{{"offline", "vif"}, {"remove", "tap"}} {
		t.Run(c.typeIf+" "+c.action, func(t *testing.T) {
			x := newXL(t, hang, false)
			x.plug(t, c.action, c.typeIf, "vif7.0")
			argvIs(t, x.launches(0))
		})
	}

	t.Run("daemon active", func(t *testing.T) {
		x := newXL(t, hang, true)
		x.plug(t, "online", "vif", "vif7.0")
		argvIs(t, x.launches(0))
		x.syslog.expect(t, "vif7.0 online: left to the selfannounce daemon")
	})

	t.Run("errtrace and announce fails", func(t *testing.T) {
		x := newXL(t, fail, false)
		x.plug(t, "online", "vif", "vif7.0", "ERRTRACE=1")
		argvIs(t, x.launches(1), []string{"--vif", "vif7.0", "--wait-ready=600s", "--log-format=console"})
		x.syslog.expect(t, "announce: no such port")
	})

	t.Run("errtrace and nothing installed", func(t *testing.T) {
		x := newXL(t, hang, false)
		os.Remove(filepath.Join(x.bin, "systemctl"))
		x.plug(t, "online", "vif", "vif7.0", "ERRTRACE=1", "ANNOUNCE_BIN=/nonexistent/announce")
		x.syslog.expect(t, "/nonexistent/announce not found")
	})

	for name, vif := range map[string]string{
		"empty vif name":     "",
		"shell in vif name":  "vif7.0;reboot",
		"glob as vif name":   "*",
		"over-long vif name": "vif1234567.89012",
	} {
		t.Run("malformed/"+name, func(t *testing.T) {
			x := newXL(t, hang, false)
			x.plug(t, "online", "vif", vif)
			argvIs(t, x.launches(0))
			x.syslog.expect(t, "malformed vif name")
		})
	}
}
