package xenhost

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Config is one xl domain config.
type Config struct {
	Name    string
	Type    string // "pvh" (default) or "hvm"
	Kernel  string // the Debian kernel, booted directly (PVH)
	Ramdisk string
	Extra   string // kernel command line
	MemMB   int    // default 128
	// Vif is the vif spec without its brackets, e.g.
	// "mac=52:54:00:12:34:56,bridge=xenbrA,ip=10.0.0.10".
	Vif string
	// More holds extra lines, verbatim (tsc_mode, cpuid, device_model...).
	More []string
}

// Write writes the config to path.
func (c Config) Write(path string) error {
	typ := c.Type
	if typ == "" {
		typ = "pvh"
	}
	mem := c.MemMB
	if mem == 0 {
		mem = 128
	}
	var b strings.Builder
	fmt.Fprintf(&b, "name = %q\ntype = %q\nmemory = %d\nvcpus = 1\n", c.Name, typ, mem)
	if c.Kernel != "" {
		fmt.Fprintf(&b, "kernel = %q\n", c.Kernel)
	}
	if c.Ramdisk != "" {
		fmt.Fprintf(&b, "ramdisk = %q\n", c.Ramdisk)
	}
	if c.Extra != "" {
		fmt.Fprintf(&b, "extra = %q\n", c.Extra)
	}
	if c.Vif != "" {
		fmt.Fprintf(&b, "vif = [%q]\n", c.Vif)
	}
	// A crashed guest is destroyed, not rebooted: a test must see it gone.
	b.WriteString("on_crash = \"destroy\"\non_reboot = \"destroy\"\n")
	for _, l := range c.More {
		b.WriteString(l + "\n")
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// CrashError is a guest the hypervisor killed, or a hotplug the emulator
// was too slow for: the emulator's doing under TCG, so the scenario may be
// redone.
type CrashError struct {
	Step  string
	Lines string // the hypervisor console lines
	Err   error
}

func (e *CrashError) Error() string {
	return fmt.Sprintf("%s: the emulator failed the guest: %s (%v)", e.Step, e.Lines, e.Err)
}

func (e *CrashError) Unwrap() error { return e.Err }

// wrap turns a step's failure into a CrashError when the hypervisor
// console shows a guest crash since the last Mark, or when libxl killed a
// hotplug script for its fixed 40 s timeout: under TCG on a loaded host a
// PV dom0 forks so slowly that the packaged vif-bridge (some thirty
// processes) can overrun it. Both are the emulator's, not the product's;
// a hook's own share of the hotplug time is checked separately.
func (h *Host) wrap(step string, err error) error {
	if err == nil {
		return nil
	}
	if c := h.Crash(); c != "" {
		return &CrashError{Step: step, Lines: c, Err: err}
	}
	if m := hotplugTimeout.FindString(err.Error()); m != "" {
		return &CrashError{Step: step, Lines: m, Err: err}
	}
	return fmt.Errorf("%s: %w", step, err)
}

// hotplugTimeout matches libxl's fixed device timeouts: the hotplug
// script killed after 40 s, or netback not reaching InitWait in time (its
// "unable to add device" after the backend-state wait).
var hotplugTimeout = regexp.MustCompile(`killing execution of \S+ \S+ because of timeout|unable to add device with path \S+/backend/vif/\S+`)

// Create runs `xl create cfg` (deadline d) and returns the domain's id.
func (h *Host) Create(ctx context.Context, cfg string, d time.Duration) (int, error) {
	c, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	out, err := run(c, "xl", "create", cfg)
	if err != nil {
		return 0, h.wrap("xl create "+cfg, fmt.Errorf("%v: %s", err, out))
	}
	name, err := cfgName(cfg)
	if err != nil {
		return 0, err
	}
	return h.DomID(ctx, name)
}

// Migrate live-migrates domain name on this host, the destination taking
// config cfg (another bridge, say), and returns the new domain id. The
// source domain is gone when it returns.
func (h *Host) Migrate(ctx context.Context, name, cfg string, d time.Duration) (int, error) {
	c, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	out, err := run(c, "xl", "migrate", "-s", "", "-C", cfg, name, "xl migrate-receive")
	if err != nil {
		return 0, h.wrap("xl migrate "+name, fmt.Errorf("%v: %s", err, out))
	}
	id, err := h.DomID(ctx, name)
	return id, h.wrap("after xl migrate "+name, err)
}

// Destroy destroys domain name, if it exists.
func (h *Host) Destroy(ctx context.Context, name string) error {
	c, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if _, err := h.DomID(c, name); err != nil {
		return nil
	}
	out, err := run(c, "xl", "destroy", name)
	if err != nil {
		return fmt.Errorf("xl destroy %s: %v: %s", name, err, out)
	}
	return nil
}

// DomID returns the id of the running domain name.
func (h *Host) DomID(ctx context.Context, name string) (int, error) {
	out, err := run(ctx, "xl", "domid", name)
	if err != nil {
		return 0, fmt.Errorf("xl domid %s: %v: %s", name, err, out)
	}
	id, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		return 0, fmt.Errorf("xl domid %s: %q", name, out)
	}
	return id, nil
}

// ConsoleLog is where xenconsoled (started with --log=guest) writes the
// guest's console.
func ConsoleLog(name string) string {
	return filepath.Join("/var/log/xen/console", "guest-"+name+".log")
}

// WaitConsole waits until the guest's console log holds substr.
func (h *Host) WaitConsole(ctx context.Context, name, substr string, d time.Duration) error {
	return h.waitLog(ctx, name, ConsoleLog(name), substr, d)
}

func (h *Host) waitLog(ctx context.Context, name, path, substr string, d time.Duration) error {
	end := time.Now().Add(d)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), substr) {
			return nil
		}
		if c := h.Crash(); c != "" {
			return &CrashError{Step: "waiting for " + substr, Lines: c, Err: errors.New("guest crashed")}
		}
		if time.Now().After(end) || ctx.Err() != nil {
			return fmt.Errorf("guest %s: no %q on its console within %v; console tail:\n%s", name, substr, d, tail(string(b), 2000))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func cfgName(cfg string) (string, error) {
	b, err := os.ReadFile(cfg)
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, "=")
		if ok && strings.TrimSpace(k) == "name" {
			return strings.Trim(strings.TrimSpace(v), `"`), nil
		}
	}
	return "", fmt.Errorf("%s: no name", cfg)
}

// Redo runs fn, and runs it again, at most maxRedos times, only while it
// fails with a CrashError: a guest the emulator killed. Any other failure
// ends it at once, so a product failure is never retried away. It returns
// how many redos it took and fn's last error.
func (h *Host) Redo(maxRedos int, fn func(attempt int) error) (int, error) {
	return h.redo(maxRedos, func(attempt int) error { h.Mark(); return fn(attempt) })
}

func (h *Host) redo(maxRedos int, fn func(attempt int) error) (int, error) {
	for redo := 0; ; redo++ {
		err := fn(redo)
		var ce *CrashError
		if err == nil || !errors.As(err, &ce) || redo == maxRedos {
			return redo, err
		}
	}
}
