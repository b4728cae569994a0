package xenhost

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Guest is what a test guest looks like on the network.
type Guest struct {
	MAC string // the vif's MAC, in the xl config
	IP  string // the guest's IPv4 address; the guest uses a /24
	// Neighbours are static ARP entries (IP -> MAC). With ARP off on eth0
	// the guest resolves nothing and sends nothing on its own: a silent VM.
	Neighbours map[string]string
	// Driver is the NIC driver module, relative to the kernel's module
	// directory: netfront (the default) for a PVH guest, e1000 for an HVM
	// guest on an emulated NIC.
	Driver string
}

// Drivers for Guest.Driver.
const (
	DriverNetfront = "kernel/drivers/net/xen-netfront.ko"
	DriverE1000    = "kernel/drivers/net/ethernet/intel/e1000/e1000.ko"
)

// Busybox is where Debian's busybox-static puts its binary.
const Busybox = "/bin/busybox"

// BuildInitramfs writes a gzip'd newc initramfs for g into dir and returns
// its path: busybox-static, the NIC driver module from the kernel package
// (modulesDir/<abi>/...), and an init that configures eth0 and then idles.
// Nothing is committed: it is built from the installed packages each time.
func BuildInitramfs(dir, modulesDir, abi string, g Guest) (string, error) {
	bb, err := os.ReadFile(Busybox)
	if err != nil {
		return "", fmt.Errorf("guest initramfs: busybox-static: %w", err)
	}
	driver := g.Driver
	if driver == "" {
		driver = DriverNetfront
	}
	nf, err := os.ReadFile(filepath.Join(modulesDir, abi, driver))
	if err != nil {
		return "", fmt.Errorf("guest initramfs: NIC driver: %w", err)
	}
	var w cpioWriter
	for _, d := range []string{"bin", "dev", "proc", "sys"} {
		w.dir(d)
	}
	w.file("bin/busybox", 0o755, bb)
	w.file("nic.ko", 0o644, nf)
	w.file("init", 0o755, []byte(guestInit(g)))
	w.trailer()
	var out bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&out, gzip.BestSpeed)
	zw.Write(w.buf.Bytes())
	if err := zw.Close(); err != nil {
		return "", err
	}
	p := filepath.Join(dir, "guest-initrd.gz")
	return p, os.WriteFile(p, out.Bytes(), 0o644)
}

// guestInit is the guest's PID 1. Nothing announces the guest: ARP is off
// before any frame could leave (and with it netfront's gratuitous ARP after
// a migration), IPv6 is off on the kernel command line, and the static
// entries go in after ARP is off, since toggling NOARP flushes the
// neighbour table. "GUEST READY" on the console says the network is up.
func guestInit(g Guest) string {
	var neigh strings.Builder
	for ip, mac := range g.Neighbours {
		fmt.Fprintf(&neigh, "arp -i eth0 -s %s %s\n", ip, mac)
	}
	return `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
insmod /nic.ko
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
sysctl -w net.ipv4.conf.all.arp_notify=0 >/dev/null
ip link set eth0 arp off
ip addr add ` + g.IP + `/24 dev eth0
ip link set eth0 up
` + neigh.String() + `echo GUEST READY
while true; do sleep 3600; done
`
}

// cpioWriter writes the newc format the kernel unpacks.
type cpioWriter struct {
	buf bytes.Buffer
	ino int
}

func (w *cpioWriter) entry(name string, mode uint32, data []byte) {
	w.ino++
	fmt.Fprintf(&w.buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		w.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	w.buf.WriteString(name)
	w.buf.WriteByte(0)
	w.pad()
	w.buf.Write(data)
	w.pad()
}

func (w *cpioWriter) pad() {
	for w.buf.Len()%4 != 0 {
		w.buf.WriteByte(0)
	}
}

func (w *cpioWriter) dir(name string)                         { w.entry(name, 0o040755, nil) }
func (w *cpioWriter) file(name string, perm uint32, b []byte) { w.entry(name, 0o100000|perm, b) }
func (w *cpioWriter) trailer()                                { w.entry("TRAILER!!!", 0, nil) }
