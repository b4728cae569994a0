//go:build linux

// Package sysfscopy copies a network namespace's view of /sys/class/net and
// /proc/net into a directory laid out like a host root, for tests that hand
// `announce doctor --root` a real kernel's files and then delete what older
// kernels lack.
//
// sysfs shows the network namespace of whoever mounted it, and /proc/net
// that of the reading thread, so the copy is made on a throwaway OS thread
// that joins the namespace, mounts its own sysfs in a private mount
// namespace, and reads /proc/thread-self/net.
package sysfscopy

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// Copy writes dst/sys/class/net (symlinks as the kernel has them), the
// /sys/devices directories they point at, and dst/proc/net/{route,bonding/*,
// vlan/config}, as seen from the network namespace at netnsPath
// ("/run/netns/NAME"; "" for the caller's process). Attributes the kernel
// refuses to read (operation not supported, invalid on a down link) are
// left out, as they would be from any copy.
func Copy(dst, netnsPath string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread has left the process's mount and
		// network namespaces, so it must die with the goroutine.
		errc <- copyOnThread(dst, netnsPath)
	}()
	return <-errc
}

func copyOnThread(dst, netnsPath string) error {
	if err := unix.Unshare(unix.CLONE_FS | unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare: %w", err)
	}
	if netnsPath != "" {
		f, err := os.Open(netnsPath)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("setns %s: %w", netnsPath, err)
		}
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	sys, err := os.MkdirTemp("", "sysfscopy")
	if err != nil {
		return err
	}
	defer os.Remove(sys)
	if err := unix.Mount("sysfs", sys, "sysfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount sysfs: %w", err)
	}
	defer unix.Unmount(sys, unix.MNT_DETACH)

	classNet := filepath.Join(sys, "class", "net")
	ents, err := os.ReadDir(classNet)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dst, "sys", "class", "net"), 0o755); err != nil {
		return err
	}
	for _, e := range ents {
		src := filepath.Join(classNet, e.Name())
		out := filepath.Join(dst, "sys", "class", "net", e.Name())
		if e.Type()&fs.ModeSymlink == 0 {
			if err := copyFile(src, out); err != nil {
				return err
			}
			continue
		}
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		if err := os.Symlink(target, out); err != nil {
			return err
		}
		devDir, err := filepath.EvalSymlinks(src)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(sys, devDir)
		if err != nil || strings.HasPrefix(rel, "..") {
			return fmt.Errorf("%s points outside sysfs: %s", src, devDir)
		}
		if err := copyTree(devDir, filepath.Join(dst, "sys", rel)); err != nil {
			return err
		}
	}
	return copyProcNet(dst)
}

// copyTree copies dir's files and subdirectories, keeping symlinks as links
// and not following them.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // a directory that vanished or cannot be listed
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(out, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, out); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
			return nil
		default:
			return copyFile(p, out)
		}
	})
}

// copyFile copies a sysfs or procfs file by reading it to its end (their
// sizes are nominal); write-only and unreadable attributes are skipped.
func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}

func copyProcNet(dst string) error {
	const procNet = "/proc/thread-self/net"
	out := filepath.Join(dst, "proc", "net")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for _, f := range []string{"route", "vlan/config"} {
		if err := copyFile(filepath.Join(procNet, f), filepath.Join(out, f)); err != nil {
			return err
		}
	}
	bonds, err := os.ReadDir(filepath.Join(procNet, "bonding"))
	if err != nil {
		return nil // no bonding module loaded
	}
	for _, b := range bonds {
		if err := copyFile(filepath.Join(procNet, "bonding", b.Name()), filepath.Join(out, "bonding", b.Name())); err != nil {
			return err
		}
	}
	return nil
}
