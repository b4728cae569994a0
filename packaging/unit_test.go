package packaging_test

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// systemd 219 (CentOS 7 based XenServer/XCP-ng dom0) ignores directives it
// does not know, but resolves SystemCallFilter= names one by one: an allow
// list of "@group" names it cannot resolve leaves only execve and exit, and
// the daemon dies at its first system call. Deny lists degrade safely.
func TestUnitSafeOnSystemd219(t *testing.T) {
	b, err := os.ReadFile("../systemd/selfannounce.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := string(b)
	for _, l := range strings.Split(unit, "\n") {
		if v, ok := strings.CutPrefix(l, "SystemCallFilter="); ok && !strings.HasPrefix(v, "~") {
			t.Errorf("allow-list %q would starve the daemon under systemd 219; use a ~ deny list", l)
		}
	}
	// The non-negotiables.
	for _, want := range []string{
		"Type=notify", "WatchdogSec=", "Restart=on-failure",
		"CapabilityBoundingSet=CAP_NET_RAW CAP_NET_ADMIN\n",
		"NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
		"MemoryDenyWriteExecute=yes", "LockPersonality=yes",
		"ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectKernelLogs=yes",
		"ExecReload=/bin/kill -HUP $MAINPID",
	} {
		if !strings.Contains(unit, want) {
			t.Errorf("unit lacks %q", strings.TrimSpace(want))
		}
	}
	if regexp.MustCompile(`(?m)^PrivateNetwork=yes`).MatchString(unit) {
		t.Error("the daemon must run in the host network namespace")
	}
	fams := regexp.MustCompile(`(?m)^RestrictAddressFamilies=(.*)$`).FindStringSubmatch(unit)
	if fams == nil || strings.Join(strings.Fields(fams[1]), " ") != "AF_UNIX AF_NETLINK AF_PACKET AF_INET AF_INET6" {
		t.Errorf("RestrictAddressFamilies= %v, want exactly the families the daemon uses", fams)
	}
}
