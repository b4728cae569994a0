// Command selfannounce-vm boots Debian's kernel (or Xen with it as dom0)
// under QEMU the way the kernel e2e tests do, runs a script inside as root,
// and prints where its results are. For trying a scenario by hand:
//
//	sudo selfannounce-vm -c 'modprobe bonding; ip -d link'
//	sudo selfannounce-vm --xen --systemd --script steps.sh
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/selfannounce/selfannounce/internal/vm"
)

func main() {
	var o vm.Options
	script := flag.String("script", "", "shell script file to run inside")
	cmd := flag.String("c", "", "shell command to run inside (instead of --script)")
	systemd := flag.Bool("systemd", false, "boot with systemd as PID 1")
	flag.BoolVar(&o.Xen, "xen", false, "boot Debian's Xen with the kernel as PV dom0")
	flag.IntVar(&o.MemMB, "mem", 2048, "machine memory, MiB")
	flag.IntVar(&o.CPUs, "cpus", 2, "virtual CPUs")
	flag.StringVar(&o.Dir, "dir", "", "run directory (default: a new one under $TMPDIR)")
	flag.StringVar(&o.Cmdline, "cmdline", "", "extra kernel command line")
	flag.DurationVar(&o.Timeout, "timeout", 5*time.Minute, "deadline for boot and script; QEMU is killed after")
	flag.Parse()
	if os.Geteuid() != 0 {
		fail(2, "needs root")
	}
	switch {
	case *cmd != "" && *script != "":
		fail(2, "give --script or -c, not both")
	case *cmd != "":
		o.Script = *cmd
	case *script != "":
		b, err := os.ReadFile(*script)
		if err != nil {
			fail(2, err.Error())
		}
		o.Script = string(b)
	default:
		fail(2, "nothing to run: give --script FILE or -c COMMAND")
	}
	if *systemd {
		o.Init = vm.InitSystemd
	}
	o.Name = "cli"
	if err := vm.Available(); err != nil {
		fail(3, err.Error())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := vm.Run(ctx, o)
	if res != nil {
		fmt.Printf("run dir:  %s\nresults:  %s\nconsole:  %s\nboot:     %v\ntotal:    %v\n", res.RunDir, res.Dir, res.Console, res.Boot.Round(time.Millisecond), res.Total.Round(time.Millisecond))
	}
	if err != nil {
		var ve *vm.Error
		if errors.As(err, &ve) {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(4)
		}
		fail(3, err.Error())
	}
	fmt.Printf("powered off: %v\nexit:     %d\n", res.PoweredOff, res.Exit)
	os.Exit(res.Exit)
}

func fail(code int, msg string) {
	fmt.Fprintln(os.Stderr, "selfannounce-vm: "+msg)
	os.Exit(code)
}
