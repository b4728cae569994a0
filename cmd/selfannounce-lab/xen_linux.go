//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/selfannounce/selfannounce/internal/lab"
	"github.com/selfannounce/selfannounce/internal/vm"
	"github.com/selfannounce/selfannounce/internal/xenhost"
)

// runXen is --xen: boot Debian's Xen under QEMU with the host's root and
// run this program inside dom0 (--xen-dom0), which migrates a real silent
// PVH guest from xenbrA to xenbrB without an agent, and back with the
// daemon, and prints the same table as the namespace lab.
func runXen(bin string, asJSON bool) {
	k, err := vm.FindKernel()
	if err != nil {
		fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		fatal(err)
	}
	jsonFlag := ""
	if asJSON {
		jsonFlag = " --json"
	}
	if !asJSON {
		fmt.Println("Booting Xen 4.17 under QEMU (TCG) with Debian's kernel as dom0; a guest create and each migration take tens of seconds...")
	}
	res, err := vm.Run(context.Background(), vm.Options{
		Name: "selfannounce-lab-xen", Xen: true, MemMB: 2048, CPUs: 2, Dom0MB: 1024,
		Copy:         map[string]string{"bin/lab": self, "bin/announce": bin},
		Script:       fmt.Sprintf("%[1]s/bin/lab --xen-dom0 --vmlinuz %[2]s --announce %[1]s/bin/announce%[3]s > $VM_RESULTS/lab.txt 2>&1\n", vm.GuestRunDir, k.Vmlinuz, jsonFlag),
		Timeout:      30 * time.Minute,
		GuestCrashOK: true,
	})
	if res != nil {
		if b, rerr := os.ReadFile(filepath.Join(res.Dir, "lab.txt")); rerr == nil {
			os.Stdout.Write(b)
		}
	}
	if err != nil {
		fatal(err)
	}
	if res.Exit != 0 {
		fmt.Fprintf(os.Stderr, "selfannounce-lab: the Xen lab failed inside dom0 (exit %d); console: %s\n", res.Exit, res.Console)
		os.Exit(1)
	}
}

// runXenDom0 is the lab inside dom0.
func runXenDom0(bin, vmlinuz, cfg string, asJSON bool) {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "selfannounce-xenlab")
	if err != nil {
		fatal(err)
	}
	logf := func(f string, a ...any) {
		if !asJSON {
			fmt.Printf("  "+f+"\n", a...)
		}
	}
	tb, err := xenhost.NewTestbed(ctx, dir, vmlinuz, logf)
	if err != nil {
		fatal(err)
	}
	defer tb.Close()
	if !asJSON {
		fmt.Printf("\nLab: real Xen dom0, bridges xenbrA and xenbrB each with an uplink into the switch (Linux bridge, 300 s ageing); client %s; silent PVH guest %s %s\n", lab.ClientIP, lab.GuestMAC, lab.GuestIP)
		fmt.Printf("Migration: xl migrate -C (vif moves from xenbrA to xenbrB and back). Client pings every %v; 10 s counted after carrier.\n\n", xenhost.PingInterval)
	}
	print := func(r lab.Report) {
		if asJSON {
			fmt.Println(r.JSON())
		} else {
			fmt.Println(r)
		}
	}
	mv, _, err := tb.Move(ctx, lab.XenBridgeB, "without agent", false, nil, nil)
	if err != nil {
		fatal(err)
	}
	print(mv.Report)
	d := tb.Lab.HostA.Cmd(bin, "daemon", "--config", cfg)
	stderr, _ := d.StderrPipe()
	if err := d.Start(); err != nil {
		fatal(err)
	}
	defer func() { d.Process.Signal(os.Interrupt); d.Wait() }()
	if err := waitLine(stderr, "watching", time.Minute); err != nil {
		fatal(fmt.Errorf("daemon did not start: %w", err))
	}
	mv, _, err = tb.Move(ctx, lab.XenBridgeA, "announce daemon", false, nil, nil)
	if err != nil {
		fatal(err)
	}
	print(mv.Report)
	if !asJSON && tb.Redos > 0 {
		fmt.Printf("(%d run(s) redone: the emulator killed the guest on resume)\n", tb.Redos)
	}
}

// xenConfig: in dom0 the guest's identity comes from the real xenstored.
const xenConfig = `libvirt: {socket: "off"}
ovs: {db: "off"}
metrics: {listen: ""}
`
