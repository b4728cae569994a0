package hooks_test

import (
	"testing"
)

const vmUUID = "0e4d3c2b-1a09-4f8e-9d7c-6b5a4f3e2d1c"

// xenopsd runs /etc/xapi.d/vm-post-migrate/* as
// "<script> -vmuuid <uuid> -reason destination" (xenops_hooks.ml), with no
// stdin, capturing stdout until EOF.
func TestXAPIHook(t *testing.T) {
	hook := script(t, "xapi-vm-post-migrate")

	t.Run("destination", func(t *testing.T) {
		l := newLab(t, hang, false)
		r := l.run([]string{hook, "-vmuuid", vmUUID, "-reason", "destination"}, nil, "")
		expectOK(t, r)
		argvIs(t, l.launches(1), []string{"--vm-uuid", vmUUID, "--wait-ready=30s", "--log-format=console"})
		l.checkDetached()
		l.syslog.expect(t, "xapi: VM "+vmUUID+": migrated in")
		if r.stdout != "" {
			t.Fatalf("stdout %q: xenopsd logs it as hook output", r.stdout)
		}
	})

	t.Run("arguments in the other order", func(t *testing.T) {
		l := newLab(t, hang, false)
		expectOK(t, l.run([]string{hook, "-reason", "destination", "-vmuuid", vmUUID, "-vmdomid", "7"}, nil, ""))
		argvIs(t, l.launches(1), []string{"--vm-uuid", vmUUID, "--wait-ready=30s", "--log-format=console"})
	})

	t.Run("wait override", func(t *testing.T) {
		l := newLab(t, hang, false)
		expectOK(t, l.run([]string{hook, "-vmuuid", vmUUID, "-reason", "destination"}, []string{"SELFANNOUNCE_WAIT=5s"}, ""))
		argvIs(t, l.launches(1), []string{"--vm-uuid", vmUUID, "--wait-ready=5s", "--log-format=console"})
	})

	for _, reason := range []string{"source", "none", "suspend"} {
		t.Run("reason "+reason, func(t *testing.T) {
			l := newLab(t, hang, false)
			expectOK(t, l.run([]string{hook, "-vmuuid", vmUUID, "-reason", reason}, nil, ""))
			argvIs(t, l.launches(0))
		})
	}

	t.Run("daemon active", func(t *testing.T) {
		l := newLab(t, hang, true)
		expectOK(t, l.run([]string{hook, "-vmuuid", vmUUID, "-reason", "destination"}, nil, ""))
		argvIs(t, l.launches(0))
		if got := l.systemctlCalls(); got != "is-active --quiet selfannounce.service\n" {
			t.Fatalf("systemctl called as %q", got)
		}
		l.syslog.expect(t, "left to the selfannounce daemon")
	})

	t.Run("announce fails", func(t *testing.T) {
		l := newLab(t, fail, false)
		expectOK(t, l.run([]string{hook, "-vmuuid", vmUUID, "-reason", "destination"}, nil, ""))
		argvIs(t, l.launches(1), []string{"--vm-uuid", vmUUID, "--wait-ready=30s", "--log-format=console"})
		// announce's own output reaches syslog too.
		l.syslog.expect(t, "announce: no such port")
	})

	t.Run("announce missing", func(t *testing.T) {
		l := newLab(t, hang, false)
		expectOK(t, l.run([]string{hook, "-vmuuid", vmUUID, "-reason", "destination"}, []string{"ANNOUNCE_BIN=/nonexistent/announce"}, ""))
		l.syslog.expect(t, "/nonexistent/announce not found")
	})

	for name, args := range map[string][]string{
		"no arguments":         {},
		"uuid without value":   {"-vmuuid"},
		"reason without value": {"-vmuuid", vmUUID, "-reason"},
		"no uuid":              {"-reason", "destination"},
		"malformed uuid":       {"-vmuuid", "0e4d3c2b;reboot", "-reason", "destination"},
		"short uuid":           {"-vmuuid", "0e4d3c2b-1a09-4f8e-9d7c", "-reason", "destination"},
		"glob in uuid":         {"-vmuuid", "*", "-reason", "destination"},
	} {
		t.Run("malformed/"+name, func(t *testing.T) {
			l := newLab(t, hang, false)
			expectOK(t, l.run(append([]string{hook}, args...), nil, ""))
			argvIs(t, l.launches(0))
			l.syslog.expect(t, "malformed arguments")
		})
	}
}
