// Command selfannounce-lab runs the migration lab: a silent VM live-migrates
// between two hypervisor hosts in network namespaces, once without an agent
// and once with each way of running selfannounce, and prints what a pinging
// client saw. `sudo make lab` runs it with the embedded defaults.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/selfannounce/selfannounce/internal/lab"
)

// labConfig is the embedded default: the lab has no xenstore, so the guest's
// identity comes from config, as on a host without one.
const labConfig = `guests:
  - port: "vif*"
    mac: ` + lab.GuestMAC + `
    ips: [` + lab.GuestIP + `, "` + lab.GuestIP6 + `"]
metrics: {listen: ""}
`

func main() {
	bin := flag.String("announce", "", "path of the announce binary (default: beside this program)")
	modes := flag.String("modes", "none,oneshot,daemon", "scenarios to run, in order: none, oneshot, daemon")
	asJSON := flag.Bool("json", false, "print one JSON object per scenario")
	flag.BoolVar(&useOVS, "ovs", false, "build hosts A and B on Open vSwitch bridges (userspace datapath) instead of Linux bridges")
	useXen := flag.Bool("xen", false, "boot real Xen under QEMU and migrate a real PVH guest between two dom0 bridges (slow under TCG)")
	xenDom0 := flag.Bool("xen-dom0", false, "internal: the --xen lab inside dom0")
	vmlinuz := flag.String("vmlinuz", "", "internal: the guest kernel for --xen-dom0")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "selfannounce-lab: needs root (network namespaces): run `sudo make lab`")
		os.Exit(2)
	}
	if *bin == "" {
		self, _ := os.Executable()
		*bin = filepath.Join(filepath.Dir(self), "announce")
	}
	if _, err := os.Stat(*bin); err != nil {
		fmt.Fprintf(os.Stderr, "selfannounce-lab: announce binary: %v\n", err)
		os.Exit(2)
	}
	if *useXen {
		runXen(*bin, *asJSON)
		return
	}
	dir, err := os.MkdirTemp("", "selfannounce-lab")
	if err != nil {
		fatal(err)
	}
	defer os.RemoveAll(dir)
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte(labConfig), 0o644); err != nil {
		fatal(err)
	}
	if *xenDom0 {
		if err := os.WriteFile(cfg, []byte(xenConfig), 0o644); err != nil {
			fatal(err)
		}
		runXenDom0(*bin, *vmlinuz, cfg, *asJSON)
		return
	}
	if !*asJSON {
		fmt.Printf("Lab: switch (Linux bridge, 300 s ageing) ─ host A, host B, client %s; silent VM %s %s\n", lab.ClientIP, lab.GuestMAC, lab.GuestIP)
		fmt.Printf("Migration: Xen-style; destination vif bridged and admin-up first, carrier when the guest resumes. Client pings every 10 ms.\n\n")
	}
	ok := true
	for _, mode := range strings.Split(*modes, ",") {
		rep, err := run(mode, *bin, cfg)
		if err != nil {
			fatal(fmt.Errorf("%s: %w", mode, err))
		}
		if *asJSON {
			fmt.Println(rep.JSON())
		} else {
			fmt.Println(rep)
		}
		if mode == "daemon" && rep.Lost > 1 {
			ok = false
		}
	}
	if !ok {
		fmt.Fprintln(os.Stderr, "selfannounce-lab: the daemon scenario lost more than 1 ping (target: at most 1 at 10 ms)")
		os.Exit(1)
	}
}

// useOVS is --ovs.
var useOVS bool

func run(mode, bin, cfg string) (lab.Report, error) {
	l, err := lab.New(lab.Options{OVS: useOVS})
	if err != nil {
		return lab.Report{}, err
	}
	defer l.Close()
	if useOVS {
		// The agent must find host B's private OVS.
		cfg = filepath.Join(filepath.Dir(cfg), "config-ovs.yaml")
		if err := os.WriteFile(cfg, []byte(l.AgentConfig(labConfig)), 0o644); err != nil {
			return lab.Report{}, err
		}
	}
	m := lab.DefaultMigration()
	ctx := context.Background()
	announceArgs := []string{"--vif", lab.DstVif, "--mac", lab.GuestMAC, "--ip", lab.GuestIP, "--ip", lab.GuestIP6}
	if useOVS {
		announceArgs = append(announceArgs, "--config", cfg)
	}
	switch mode {
	case "none":
		return l.Migrate(ctx, "without agent", m)
	case "oneshot":
		var cmd *exec.Cmd
		m.OnResumed = func() error {
			cmd = l.HostB.Cmd(bin, announceArgs...)
			return cmd.Start()
		}
		rep, err := l.Migrate(ctx, "announce --vif", m)
		if cmd != nil {
			if werr := cmd.Wait(); werr != nil && err == nil {
				err = fmt.Errorf("announce --vif: %v", werr)
			}
		}
		return rep, err
	case "daemon":
		d := l.HostB.Cmd(bin, "daemon", "--config", cfg)
		stderr, _ := d.StderrPipe()
		if err := d.Start(); err != nil {
			return lab.Report{}, err
		}
		defer func() { d.Process.Signal(os.Interrupt); d.Wait() }()
		if err := waitLine(stderr, "watching", 5*time.Second); err != nil {
			return lab.Report{}, fmt.Errorf("daemon did not start: %w", err)
		}
		return l.Migrate(ctx, "announce daemon", m)
	}
	return lab.Report{}, fmt.Errorf("unknown mode %q", mode)
}

// waitLine waits for the daemon's start-up log line, then drains the rest so
// the daemon never blocks on a full pipe.
func waitLine(r interface{ Read([]byte) (int, error) }, substr string, timeout time.Duration) error {
	found := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(r)
		seen := false
		for sc.Scan() {
			if !seen && strings.Contains(sc.Text(), substr) {
				seen = true
				close(found)
			}
		}
		if !seen {
			close(found)
		}
	}()
	select {
	case <-found:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("no %q log line within %v", substr, timeout)
	}
}

func fatal(err error) {
	fmt.Fprintf(os.Stderr, "selfannounce-lab: %v\n", err)
	os.Exit(1)
}
