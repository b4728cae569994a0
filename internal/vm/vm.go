package vm

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Init is what runs as PID 1 on the overlay root.
type Init int

const (
	// InitScript: a shell mounts /run, /tmp, /dev/pts, runs Script and
	// powers off. The fastest boot.
	InitScript Init = iota
	// InitSystemd: the host's systemd is PID 1 and boots vm.target
	// (basic.target plus the unit that runs Script), then powers off.
	InitSystemd
)

// Options describe one boot.
type Options struct {
	Name string // for logs and the run directory; need not be unique
	Xen  bool   // boot Debian's Xen with the kernel as its PV dom0
	Init Init
	// MemMB and CPUs size the machine; Xen gives dom0 Dom0MB of it.
	MemMB, CPUs, Dom0MB int
	// Script is run by /bin/sh as root inside. $VM_RESULTS is a directory
	// on the host (Result.Dir) that it can write to.
	Script string
	Env    map[string]string
	// Files are written onto the root before init starts: guest path →
	// content. Content starting with "#!" is made executable.
	Files map[string]string
	// Copy puts host files into the VM's run share: path under /vm →
	// host path. Nothing is copied onto the root, so big binaries cost
	// nothing until they are read.
	Copy map[string]string
	// Mask lists systemd units not to start with InitSystemd (an empty
	// unit file in /etc/systemd/system masks a unit), such as host
	// services a test does not need under TCG.
	Mask []string
	// Cmdline is appended to the kernel's command line.
	Cmdline string
	// QEMUArgs are appended to QEMU's (NICs, more disks...).
	QEMUArgs []string
	// Timeout bounds the whole run, boot included; QEMU is killed after.
	// Zero means 5 minutes.
	Timeout time.Duration
	// Dir is the host directory for the run (initramfs, console, shares).
	// Empty means a new temporary directory, left in place for inspection.
	Dir string
	// GuestCrashOK leaves a Xen guest's triple fault (a "(XEN) d<N>v..."
	// line, N not 0) to the test inside, which redoes its scenario: under
	// TCG a migrated PVH guest sometimes dies on resume. Dom0's own still
	// ends the run.
	GuestCrashOK bool
}

// Result is what a finished run left behind.
type Result struct {
	RunDir  string // everything of the run
	Dir     string // $VM_RESULTS on the host
	Console string // path of the serial console log (Xen's and the kernel's)
	// Exit is the script's exit status; -1 when it did not finish.
	Exit int
	// Boot is QEMU start to the script starting; Total is start to exit.
	Boot, Total time.Duration
	// PoweredOff says the machine powered itself off after the script;
	// false when QEMU was killed haltGrace after the script's end (a
	// machine that halted instead, or did not get there in time).
	PoweredOff bool
}

// Run failures a caller may act on. A guest crash under Xen (the emulator's
// triple faults) is ErrTripleFault, so a scenario can be redone without
// retrying product failures away.
var (
	ErrPanic       = errors.New("kernel or hypervisor panic")
	ErrTripleFault = errors.New("triple fault")
	ErrTimeout     = errors.New("deadline passed")
	ErrInit        = errors.New("the VM's init failed")
	ErrNoExit      = errors.New("the VM stopped before the script finished")
)

// Error is a failed run, with the console's tail.
type Error struct {
	Kind    error
	Detail  string
	Console string
	Tail    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%v: %s\n--- console tail (%s) ---\n%s", e.Kind, e.Detail, e.Console, e.Tail)
}

func (e *Error) Unwrap() error { return e.Kind }

// Paths inside the VM.
const (
	GuestRunDir  = "/vm"         // the run share
	GuestResults = "/vm/results" // $VM_RESULTS
)

// Console markers. The first three end a run at once.
var fatalMarks = []struct {
	s    string
	kind error
}{
	{"Kernel panic", ErrPanic},
	{"(XEN) Panic", ErrPanic},
	{"Triple fault", ErrTripleFault},
	{"VM-INIT-FAILED", ErrInit},
}

// guestCrash says a fatal-looking line is a guest's crash the test inside
// handles (Options.GuestCrashOK).
func guestCrash(o Options, kind error, line string) bool {
	return o.GuestCrashOK && kind == ErrTripleFault && strings.Contains(line, "(XEN) d") && !strings.Contains(line, "(XEN) d0v")
}

const (
	markStart = "VM-SCRIPT-START"
	markExit  = "VM-SCRIPT-EXIT"
)

// haltGrace is how long a machine may take from the script's end to power
// off: systemd stopping under TCG on a loaded host takes seconds.
const haltGrace = 30 * time.Second

const shares = "trans=virtio,version=9p2000.L,msize=512000"

// initramfs /init: modules, shares, overlay, switch_root. The host root is
// cached loosely: it is read-only and what a run reads from it does not
// change under it.
const initTmpl = `#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
die() { echo "VM-INIT-FAILED: $*"; sleep 1; poweroff -f; }
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in @INSMODS@; do insmod $m || die "insmod $m"; done
mount -t 9p -o ` + shares + `,ro,cache=loose hostroot /lower || die "mount the host root"
mount -t tmpfs -o mode=0755 tmpfs /ovl || die "tmpfs"
mkdir /ovl/upper /ovl/work
mount -t overlay -o lowerdir=/lower,upperdir=/ovl/upper,workdir=/ovl/work overlay /newroot || die "mount the overlay"
mkdir -p /newroot@MODDIR@ /newroot/vm
mount -t 9p -o ` + shares + `,ro modules /newroot@MODDIR@ || die "mount the modules"
mount -t 9p -o ` + shares + `,cache=mmap vmrun /newroot/vm || die "mount the run share"
if [ -d /newroot/vm/root ]; then cp -a /newroot/vm/root/. /newroot/ || die "copy the files"; fi
# The host's /tmp is not the VM's: systemd-tmpfiles would empty it (D /tmp)
# through the overlay, file by file over 9p.
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /newroot/tmp || die "tmpfs /tmp"
# The host may be a container: systemd would believe it runs in one, and
# then ignore the kernel command line.
rm -f /newroot/.dockerenv /newroot/run/.containerenv
for d in proc sys dev; do mount --move /$d /newroot/$d || die "move /$d"; done
exec switch_root /newroot @INIT@
`

// PID 1 in InitScript mode: what systemd would have mounted, then the script.
const stageScript = `mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p /dev/pts /dev/shm /run/lock
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
hostname vm
ip link set lo up
. /vm/run.sh
rc=$?
sync
/bin/busybox poweroff -f
`

// run.sh: shared by both inits; records the script's exit status.
const runScript = `. /vm/env
echo ` + markStart + `
cd "${VM_CWD:-/}"
/bin/sh /vm/script.sh
rc=$?
echo $rc > /vm/exit.code
sync
echo "` + markExit + ` $rc"
`

const systemdTarget = `[Unit]
Description=selfannounce VM run
Requires=basic.target vm-script.service
After=basic.target
AllowIsolate=yes
`

// The script's results are on 9p, written through and synced: nothing is
// lost by powering off at once, and systemd-shutdown waiting out udev
// workers costs 20 s under TCG.
const systemdService = `[Unit]
Description=selfannounce VM script
After=basic.target
SuccessAction=poweroff-immediate
FailureAction=poweroff-immediate
[Service]
Type=oneshot
ExecStart=/bin/sh -c '. /vm/run.sh; exit 0'
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity
`

// Run boots the VM, runs o.Script and returns after QEMU is gone. QEMU
// never outlives the call, nor the test process (it gets SIGKILL when the
// process dies, a go test timeout panic included).
func Run(ctx context.Context, o Options) (*Result, error) {
	k, err := FindKernel()
	if err != nil {
		return nil, err
	}
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Minute
	}
	if o.MemMB == 0 {
		o.MemMB = 2048
	}
	if o.CPUs == 0 {
		o.CPUs = 2
	}
	if o.Dom0MB == 0 {
		o.Dom0MB = 1024
	}
	if o.Name == "" {
		o.Name = "vm"
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()

	dir := o.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "selfannounce-vm-"+safeName(o.Name)+"-"); err != nil {
			return nil, err
		}
	}
	res := &Result{RunDir: dir, Dir: filepath.Join(dir, "vm", "results"), Console: filepath.Join(dir, "console.log"), Exit: -1}
	if err := prepare(dir, k, o); err != nil {
		return res, err
	}
	args, err := qemuArgs(dir, k, o)
	if err != nil {
		return res, err
	}
	os.WriteFile(filepath.Join(dir, "qemu.cmdline"), []byte(strings.Join(args, " ")+"\n"), 0o644)
	return res, boot(ctx, o, args, res)
}

func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '_'
	}, s)
}

// modulesMount is where the modules share goes on the overlay root: /lib
// is a relative symlink on merged-/usr systems, resolved here because the
// initramfs's own /lib is not the root's.
func modulesMount() string {
	if lib, err := filepath.EvalSymlinks("/lib"); err == nil {
		return filepath.Join(lib, "modules")
	}
	return "/lib/modules"
}

func prepare(dir string, k *Kernel, o Options) error {
	share := filepath.Join(dir, "vm")
	if err := os.MkdirAll(filepath.Join(share, "results"), 0o777); err != nil {
		return err
	}
	os.Remove(filepath.Join(share, "exit.code"))
	env := map[string]string{
		"PATH":              "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:" + filepath.Join(runtime.GOROOT(), "bin"),
		"HOME":              "/root",
		"VM_RESULTS":        GuestResults,
		EnvInside:           "1",
		"SELFANNOUNCE_XEN":  strconv.FormatBool(o.Xen),
		"SELFANNOUNCE_INIT": map[Init]string{InitScript: "script", InitSystemd: "systemd"}[o.Init],
	}
	for k, v := range o.Env {
		env[k] = v
	}
	var keys []string
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var eb strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&eb, "export %s=%s\n", k, shQuote(env[k]))
	}
	files := map[string]string{
		"env":       eb.String(),
		"script.sh": o.Script,
		"run.sh":    runScript,
		"stage.sh":  stageScript,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(share, name), []byte(content), 0o755); err != nil {
			return err
		}
	}
	root := map[string]string{}
	if o.Init == InitSystemd {
		root["/etc/machine-id"] = randomID() + "\n"
		// The host's fstab names the host's disks: waiting for them would
		// stall local-fs.target for 90 s.
		root["/etc/fstab"] = "# selfannounce VM: the root is an overlay set up by the initramfs\n"
		root["/etc/hostname"] = "vm\n"
		root["/etc/systemd/system/vm.target"] = systemdTarget
		root["/etc/systemd/system/vm-script.service"] = systemdService
	}
	for _, u := range o.Mask {
		root["/etc/systemd/system/"+u] = ""
	}
	for p, c := range o.Files {
		root[p] = c
	}
	for p, c := range root {
		dst := filepath.Join(share, "root", p)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if strings.HasPrefix(c, "#!") {
			mode = 0o755
		}
		if err := os.WriteFile(dst, []byte(c), mode); err != nil {
			return err
		}
	}
	for p, src := range o.Copy {
		dst := filepath.Join(share, p)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := copyFile(src, dst); err != nil {
			return err
		}
	}
	init := "/bin/sh /vm/stage.sh"
	if o.Init == InitSystemd {
		init = "/lib/systemd/systemd --unit=vm.target"
	}
	tmpl := strings.NewReplacer("@MODDIR@", modulesMount(), "@INIT@", init).Replace(initTmpl)
	return writeInitramfs(filepath.Join(dir, "initrd"), k, tmpl)
}

func copyFile(src, dst string) error {
	// A hard link costs nothing when both are on one filesystem.
	os.Remove(dst)
	if os.Link(src, dst) == nil {
		return nil
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, st.Mode().Perm())
}

func randomID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func qemuArgs(dir string, k *Kernel, o Options) ([]string, error) {
	initrd := filepath.Join(dir, "initrd")
	for _, p := range []string{dir, k.Vmlinuz, initrd} {
		// QEMU splits -initrd and -fsdev values at commas.
		if strings.Contains(p, ",") {
			return nil, fmt.Errorf("path %q has a comma, which QEMU cannot take", p)
		}
	}
	kargs := "panic=-1 quiet"
	if o.Init == InitSystemd {
		kargs += " systemd.show_status=error"
	}
	kargs += " " + o.Cmdline
	a := []string{"-name", safeName(o.Name), "-accel", "tcg", "-M", "q35",
		"-m", strconv.Itoa(o.MemMB), "-smp", strconv.Itoa(o.CPUs),
		"-nodefaults", "-display", "none", "-no-reboot",
		"-chardev", "file,id=con,path=" + filepath.Join(dir, "console.log"), "-serial", "chardev:con",
		"-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
		"-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
		"-fsdev", "local,id=modules,path=" + k.ModulesDir + ",security_model=none,readonly=on",
		"-device", "virtio-9p-pci,fsdev=modules,mount_tag=modules",
		"-fsdev", "local,id=vmrun,path=" + filepath.Join(dir, "vm") + ",security_model=none",
		"-device", "virtio-9p-pci,fsdev=vmrun,mount_tag=vmrun",
	}
	if o.Xen {
		xen, err := XenHypervisor()
		if err != nil {
			return nil, err
		}
		a = append(a, "-cpu", "qemu64,+svm,+npt",
			"-kernel", xen,
			"-append", fmt.Sprintf("console=com1 dom0_mem=%dM,max:%dM noreboot", o.Dom0MB, o.Dom0MB),
			"-initrd", k.Vmlinuz+" console=hvc0 "+strings.ReplaceAll(kargs, ",", ",,")+","+initrd)
	} else {
		a = append(a, "-cpu", "max", "-kernel", k.Vmlinuz, "-initrd", initrd, "-append", "console=ttyS0 "+kargs)
	}
	return append(a, o.QEMUArgs...), nil
}

// XenHypervisor returns Debian's Xen as the ELF QEMU's multiboot loader
// takes, unpacked once from /boot/xen-*-amd64.gz.
func XenHypervisor() (string, error) {
	gz := os.Getenv("SELFANNOUNCE_XEN_GZ")
	if gz == "" {
		m, _ := filepath.Glob("/boot/xen-*-amd64.gz")
		if len(m) == 0 {
			return "", errors.New("no /boot/xen-*-amd64.gz (install xen-hypervisor-4.17-amd64)")
		}
		sort.Strings(m)
		gz = m[len(m)-1]
	}
	st, err := os.Stat(gz)
	if err != nil {
		return "", err
	}
	out := filepath.Join(CacheDir, "xen", fmt.Sprintf("%s-%d", strings.TrimSuffix(filepath.Base(gz), ".gz"), st.ModTime().Unix()))
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return "", err
	}
	data, err := exec.Command("zcat", gz).Output()
	if err != nil {
		return "", fmt.Errorf("zcat %s: %v", gz, err)
	}
	tmp := fmt.Sprintf("%s.%d", out, os.Getpid())
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return "", err
	}
	return out, os.Rename(tmp, out)
}

// boot runs QEMU and watches the console until QEMU exits, the script has
// finished, something fatal shows, or the deadline passes.
func boot(ctx context.Context, o Options, args []string, res *Result) error {
	qlog, err := os.Create(filepath.Join(res.RunDir, "qemu.log"))
	if err != nil {
		return err
	}
	defer qlog.Close()
	os.WriteFile(res.Console, nil, 0o644)
	cmd := exec.Command("qemu-system-x86_64", args...)
	cmd.Stdout, cmd.Stderr = qlog, qlog
	// Its own process group, so one kill takes whatever it spawned; and
	// SIGKILL from the kernel when the thread that forked it dies, which
	// is the locked thread below: it lives until QEMU is reaped, or until
	// the whole test process dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	exited := make(chan error, 1)
	start := time.Now()
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			runtime.UnlockOSThread()
			return
		}
		started <- nil
		exited <- cmd.Wait()
		runtime.UnlockOSThread()
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("starting qemu-system-x86_64: %w", err)
	}
	kill := func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	reaped := false
	defer func() {
		if !reaped {
			kill()
			<-exited
		}
	}()

	fail := func(kind error, detail string) error {
		kill()
		<-exited
		reaped = true
		res.Total = time.Since(start)
		return &Error{Kind: kind, Detail: fmt.Sprintf("%s (%s after start)%s", detail, res.Total.Round(time.Millisecond), qemuLog(res.RunDir)), Console: res.Console, Tail: Tail(res.Console, 60)}
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var off int64
	var partial string
	var exitSeen time.Time
	for {
		select {
		case err := <-exited:
			reaped = true
			res.Total = time.Since(start)
			// A panic with panic=-1 and -no-reboot ends QEMU before a tick.
			lines := scanConsole(res.Console, &off, &partial)
			if partial != "" {
				lines = append(lines, partial)
			}
			for _, line := range lines {
				for _, m := range fatalMarks {
					if strings.Contains(line, m.s) && !guestCrash(o, m.kind, line) {
						return &Error{Kind: m.kind, Detail: strings.TrimSpace(line), Console: res.Console, Tail: Tail(res.Console, 60)}
					}
				}
			}
			res.PoweredOff = true
			return finish(res, err)
		case <-ctx.Done():
			return fail(ErrTimeout, fmt.Sprintf("vm %s did not finish within %v", o.Name, o.Timeout))
		case <-tick.C:
		}
		for _, line := range scanConsole(res.Console, &off, &partial) {
			for _, m := range fatalMarks {
				if strings.Contains(line, m.s) && !guestCrash(o, m.kind, line) {
					return fail(m.kind, strings.TrimSpace(line))
				}
			}
			if res.Boot == 0 && strings.Contains(line, markStart) {
				res.Boot = time.Since(start)
			}
			if exitSeen.IsZero() && strings.Contains(line, markExit) {
				exitSeen = time.Now()
			}
		}
		// Powering off takes a moment; a dom0 that halts instead leaves
		// QEMU running, which is not the script's failure.
		if !exitSeen.IsZero() && time.Since(exitSeen) > haltGrace {
			kill()
			<-exited
			reaped = true
			res.Total = time.Since(start)
			return finish(res, nil)
		}
	}
}

func finish(res *Result, qerr error) error {
	b, err := os.ReadFile(filepath.Join(res.RunDir, "vm", "exit.code"))
	if err != nil {
		return &Error{Kind: ErrNoExit, Detail: fmt.Sprintf("no exit status (qemu: %v)%s", qerr, qemuLog(res.RunDir)), Console: res.Console, Tail: Tail(res.Console, 60)}
	}
	res.Exit, err = strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("exit status %q: %v", b, err)
	}
	return nil
}

func qemuLog(dir string) string {
	b, _ := os.ReadFile(filepath.Join(dir, "qemu.log"))
	if b = bytes.TrimSpace(b); len(b) == 0 {
		return ""
	}
	return "; qemu said: " + string(b)
}

// scanConsole returns the complete lines added since the last call.
func scanConsole(path string, off *int64, partial *string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	buf := make([]byte, 1<<16)
	var lines []string
	for {
		n, _ := f.ReadAt(buf, *off)
		if n == 0 {
			return lines
		}
		*off += int64(n)
		s := *partial + string(buf[:n])
		parts := strings.Split(s, "\n")
		*partial = parts[len(parts)-1]
		lines = append(lines, parts[:len(parts)-1]...)
	}
}

// Tail returns the last n lines of a console log.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no console: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
