package xenhost

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The initramfs is a newc archive the kernel (and busybox cpio) unpacks,
// holding busybox, the netfront module and an init that silences the guest.
func TestBuildInitramfs(t *testing.T) {
	if _, err := os.Stat(Busybox); err != nil {
		t.Skip("busybox-static not installed")
	}
	mods := t.TempDir()
	ko := filepath.Join(mods, "6.1.0-test", "kernel/drivers/net/xen-netfront.ko")
	os.MkdirAll(filepath.Dir(ko), 0o755)
	os.WriteFile(ko, []byte("module"), 0o644)
	p, err := BuildInitramfs(t.TempDir(), mods, "6.1.0-test", Guest{MAC: "52:54:00:12:34:56", IP: "10.0.0.10", Neighbours: map[string]string{"10.0.0.1": "02:00:00:00:00:01"}})
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("sh", "-c", "zcat "+p+" | "+Busybox+" cpio -t").CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v: %s", err, out)
	}
	for _, f := range []string{"bin/busybox", "nic.ko", "init"} {
		if !strings.Contains(string(out), f) {
			t.Errorf("initramfs lacks %s: %s", f, out)
		}
	}
	init := guestInit(Guest{IP: "10.0.0.10", Neighbours: map[string]string{"10.0.0.1": "02:00:00:00:00:01"}})
	off, up := strings.Index(init, "arp off"), strings.Index(init, "eth0 up")
	if off < 0 || up < 0 || off > up || !strings.Contains(init, "arp -i eth0 -s 10.0.0.1 02:00:00:00:00:01") {
		t.Errorf("the guest must turn ARP off before eth0 goes up and add static neighbours:\n%s", init)
	}
}

// Only a guest's crash is the emulator's; dom0's is not retried away.
func TestIsGuestCrash(t *testing.T) {
	for line, want := range map[string]bool{
		"(XEN) d2v0 Triple fault - invoking HVM shutdown action 1": true,
		"(XEN) d0v1 Triple fault":                                  false,
		"(XEN) Freed 656kB init memory":                            false,
	} {
		if got := IsGuestCrash(line); got != want {
			t.Errorf("IsGuestCrash(%q) = %v, want %v", line, got, want)
		}
	}
}

// Redo reruns only emulator failures, at most max times.
func TestRedo(t *testing.T) {
	h := &Host{}
	n := 0
	redos, err := h.redo(2, func(int) error { n++; return &CrashError{Step: "x", Lines: "Triple fault"} })
	if redos != 2 || n != 3 || err == nil {
		t.Errorf("crashes: %d redos, %d runs, err %v; want 2, 3, an error", redos, n, err)
	}
	n = 0
	redos, err = h.redo(2, func(int) error { n++; return errors.New("product failure") })
	if redos != 0 || n != 1 || err == nil {
		t.Errorf("product failure: %d redos, %d runs; want 0, 1", redos, n)
	}
	if !hotplugTimeout.MatchString("libxl: error: libxl_aoutils.c:539:async_exec_timeout: killing execution of /etc/xen/scripts/vif-bridge online because of timeout") {
		t.Error("the vif-bridge timeout is not recognised")
	}
}
