// Package xenhost turns a freshly booted Xen dom0 (Debian's hypervisor
// with Debian's kernel as PV dom0, the host's root read-only underneath,
// as internal/vm boots it) into a working Xen host for end-to-end tests:
// it loads the backend modules, starts xenstored, xen-init-dom0 and
// xenconsoled, builds guests' initramfs from the installed packages, writes
// xl configs, and creates, migrates and destroys guests through the real
// xl, every step with a deadline. It also tells a guest the emulator killed
// (a triple fault on resume under TCG) from a failure of the product.
package xenhost

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/selfannounce/selfannounce/announce/xenstore"
)

// ToolsDir holds Debian's Xen 4.17 daemons.
const ToolsDir = "/usr/lib/xen-4.17/bin"

// Modules are what a dom0 needs for xl, netback vifs and HVM taps.
var Modules = []string{"xen-evtchn", "xen-gntdev", "xen-gntalloc", "xen-privcmd", "xenfs", "xen-netback", "tun"}

// Host is a dom0 with its Xen daemons running.
type Host struct {
	// Dir is a scratch directory for configs and initramfs.
	Dir string
}

// Start prepares dom0. It is idempotent enough for one process: a second
// call finds the daemons' sockets and returns.
func Start(ctx context.Context, dir string) (*Host, error) {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	h := &Host{Dir: dir}
	if _, err := os.Stat("/proc/xen/capabilities"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	for _, m := range Modules {
		if out, err := run(ctx, "modprobe", m); err != nil {
			return nil, fmt.Errorf("dom0: modprobe %s: %v: %s", m, err, out)
		}
	}
	if caps, err := os.ReadFile("/proc/xen/capabilities"); err != nil || len(caps) == 0 {
		if out, err := run(ctx, "mount", "-t", "xenfs", "xenfs", "/proc/xen"); err != nil {
			return nil, fmt.Errorf("dom0: mount xenfs: %v: %s", err, out)
		}
	}
	if caps, _ := os.ReadFile("/proc/xen/capabilities"); !bytes.Contains(caps, []byte("control_d")) {
		return nil, fmt.Errorf("dom0: /proc/xen/capabilities is %q: not running as Xen's control domain", bytes.TrimSpace(caps))
	}
	// libxl's locks and the hotplug scripts' logs; /var/run is a fresh
	// tmpfs in the VM. Without /var/run/xen a failed create cannot even
	// destroy its half-built domain.
	for _, d := range []string{"/var/run/xen", "/var/run/xenstored", "/var/log/xen", "/var/lib/xen", "/var/run/xen-hotplug", "/var/log/xen/console", dir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(xenstore.DefaultSocket); err != nil {
		if out, err := daemon(ctx, filepath.Join(ToolsDir, "xenstored"), "--pid-file", "/var/run/xenstored.pid"); err != nil {
			return nil, fmt.Errorf("dom0: xenstored: %v: %s", err, out)
		}
		if err := waitFile(ctx, xenstore.DefaultSocket); err != nil {
			return nil, fmt.Errorf("dom0: xenstored socket: %w", err)
		}
		if out, err := run(ctx, filepath.Join(ToolsDir, "xen-init-dom0")); err != nil {
			return nil, fmt.Errorf("dom0: xen-init-dom0: %v: %s", err, out)
		}
	}
	// xenconsoled opens a pty per guest: every xl create fails without
	// /dev/pts.
	if _, err := os.Stat("/dev/pts/ptmx"); err != nil {
		os.MkdirAll("/dev/pts", 0o755)
		if out, err := run(ctx, "mount", "-t", "devpts", "devpts", "/dev/pts"); err != nil {
			return nil, fmt.Errorf("dom0: mount devpts: %v: %s", err, out)
		}
	}
	if _, err := os.Stat("/var/run/xenconsoled.pid"); err != nil {
		if out, err := daemon(ctx, filepath.Join(ToolsDir, "xenconsoled"), "--pid-file=/var/run/xenconsoled.pid", "--log=guest", "--log-dir=/var/log/xen/console"); err != nil {
			return nil, fmt.Errorf("dom0: xenconsoled: %v: %s", err, out)
		}
	}
	if out, err := run(ctx, "xl", "list"); err != nil {
		return nil, fmt.Errorf("dom0: xl list: %v: %s", err, out)
	}
	h.Mark()
	return h, nil
}

// run runs a command with ctx's deadline; output is stdout and stderr.
func run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	// xl forks a monitoring daemon per domain; should it keep the pipe,
	// the command itself has still finished.
	if errors.Is(err, exec.ErrWaitDelay) {
		err = nil
	}
	if ctx.Err() != nil && err != nil {
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return strings.TrimSpace(string(out)), err
}

// daemon starts a program that forks into the background. Its output goes
// to a file, not a pipe: the forked daemon keeps its stdio, and a pipe
// would hold Wait until the daemon exits.
func daemon(ctx context.Context, name string, args ...string) (string, error) {
	logf := filepath.Join("/var/log/xen", filepath.Base(name)+".out")
	f, err := os.Create(logf)
	if err != nil {
		return "", err
	}
	defer f.Close()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = f, f
	err = cmd.Run()
	out, _ := os.ReadFile(logf)
	return strings.TrimSpace(string(out)), err
}

func waitFile(ctx context.Context, p string) error {
	for {
		if _, err := os.Stat(p); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", p, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Mark clears the hypervisor console ring (`xl dmesg -c`); Crash looks
// only at what came after. The ring is 16 KiB, so counting lines would
// break when it wraps.
func (h *Host) Mark() {
	run(context.Background(), "xl", "dmesg", "-c")
}

// Crash returns the hypervisor console lines since the last Mark that show
// a guest killed by the hypervisor, "" when there are none. A triple fault
// on resume is the emulator's (TCG), not the product's.
func (h *Host) Crash() string {
	out, _ := run(context.Background(), "xl", "dmesg")
	var bad []string
	for _, l := range strings.Split(out, "\n") {
		if IsGuestCrash(l) {
			bad = append(bad, l)
		}
	}
	return strings.Join(bad, "\n")
}

// IsGuestCrash says whether a hypervisor console line reports a guest
// (never dom0) killed by the hypervisor.
func IsGuestCrash(line string) bool {
	if strings.Contains(line, "d0v") {
		return false
	}
	return strings.Contains(line, "Triple fault") || strings.Contains(line, "domain_crash") ||
		strings.Contains(line, "crashed")
}
