package vm

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Busybox is the static busybox of Debian's busybox-static: the initramfs's
// only program.
const Busybox = "/bin/busybox"

// bootModules are what the initramfs needs to reach the root: the virtio
// PCI transport, 9p over it, and overlayfs.
var bootModules = []string{"virtio_pci", "9pnet_virtio", "9p", "overlay"}

// moduleOrder returns the .ko files for mods, dependencies first, as
// modprobe would insert them.
func moduleOrder(k *Kernel, mods ...string) ([]string, error) {
	args := append([]string{"-d", k.Root, "-S", k.ABI, "-a", "--show-depends"}, mods...)
	out, err := exec.Command("modprobe", args...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("modprobe --show-depends %s: %v: %s", strings.Join(mods, " "), err, bytes.TrimSpace(out))
	}
	var files []string
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// "builtin NAME" needs nothing; "insmod PATH [params]" does.
		if len(f) < 2 || f[0] != "insmod" || seen[f[1]] {
			continue
		}
		seen[f[1]] = true
		files = append(files, f[1])
	}
	return files, nil
}

// cpio writes a newc archive: the format the kernel unpacks as initramfs.
type cpio struct {
	w   io.Writer
	ino int
	err error
}

func (c *cpio) entry(name string, mode uint32, rdevMajor, rdevMinor int, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	buf := append([]byte(hdr), name...)
	buf = append(buf, 0)
	for len(buf)%4 != 0 {
		buf = append(buf, 0)
	}
	buf = append(buf, data...)
	for len(buf)%4 != 0 {
		buf = append(buf, 0)
	}
	_, c.err = c.w.Write(buf)
}

func (c *cpio) dir(name string)                { c.entry(name, 0o040755, 0, 0, nil) }
func (c *cpio) file(name string, d []byte)     { c.entry(name, 0o100755, 0, 0, d) }
func (c *cpio) char(name string, maj, min int) { c.entry(name, 0o020600, maj, min, nil) }
func (c *cpio) close() error {
	c.entry("TRAILER!!!", 0, 0, 0, nil)
	return c.err
}

// writeInitramfs builds the initramfs: busybox, the boot modules and an
// init that mounts the shares, stacks the overlay and switches to it.
func writeInitramfs(path string, k *Kernel, init string) error {
	mods, err := moduleOrder(k, bootModules...)
	if err != nil {
		return err
	}
	bb, err := os.ReadFile(Busybox)
	if err != nil {
		return fmt.Errorf("busybox-static: %w", err)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	c := &cpio{w: w}
	for _, d := range []string{"bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "mod", "lower", "ovl", "newroot"} {
		c.dir(d)
	}
	// The kernel opens /dev/console for init before anything is mounted.
	c.char("dev/console", 5, 1)
	c.file("bin/busybox", bb)
	var insmods []string
	for i, m := range mods {
		data, err := os.ReadFile(m)
		if err != nil {
			return err
		}
		name := fmt.Sprintf("mod/%02d-%s", i, filepath.Base(m))
		c.file(name, data)
		insmods = append(insmods, "/"+name)
	}
	c.file("init", []byte(strings.ReplaceAll(init, "@INSMODS@", strings.Join(insmods, " "))))
	if err := c.close(); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return f.Close()
}
