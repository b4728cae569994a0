// Package netlab builds throwaway network namespaces for the lab and the
// end-to-end tests. Only namespace names live in a global space, so every
// name carries the process id and a counter: go test runs packages in
// parallel and their labs must never collide. Links are created inside
// namespaces, where their names are private.
package netlab

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

var seq atomic.Int64

// NS is a named network namespace created with `ip netns add`.
type NS struct {
	Name string
}

// UniqueName returns a namespace name no other process or call will use.
func UniqueName(role string) string {
	return fmt.Sprintf("sa%d-%d-%s", os.Getpid(), seq.Add(1), role)
}

// NewNS creates a namespace with loopback up. Close removes it.
func NewNS(role string) (*NS, error) {
	n := &NS{Name: UniqueName(role)}
	if out, err := exec.Command("ip", "netns", "add", n.Name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %v: %s", n.Name, err, bytes.TrimSpace(out))
	}
	if _, err := n.Run("ip", "link", "set", "lo", "up"); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// TestNS creates a namespace that is removed when t ends, pass or fail.
func TestNS(t testing.TB, role string) *NS {
	t.Helper()
	n, err := NewNS(role)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// Attach names the network namespace of process pid (os.Getpid(): the
// caller's own, such as a VM's root namespace) so ip netns exec and NS.Do
// reach it. Close removes only the name.
func Attach(role string, pid int) (*NS, error) {
	n := &NS{Name: UniqueName(role)}
	if out, err := exec.Command("ip", "netns", "attach", n.Name, fmt.Sprint(pid)).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns attach %s %d: %v: %s", n.Name, pid, err, bytes.TrimSpace(out))
	}
	return n, nil
}

// Close deletes the namespace; processes still inside keep it alive until
// they exit, so callers stop their processes first.
func (n *NS) Close() error {
	return exec.Command("ip", "netns", "del", n.Name).Run()
}

// Cmd returns a command that runs inside the namespace.
func (n *NS) Cmd(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Run runs a command inside the namespace and returns its trimmed output.
func (n *NS) Run(name string, args ...string) (string, error) {
	out, err := n.Cmd(name, args...).CombinedOutput()
	s := strings.TrimSpace(string(out))
	if err != nil {
		return s, fmt.Errorf("[%s] %s %s: %v: %s", n.Name, name, strings.Join(args, " "), err, s)
	}
	return s, nil
}

// MustRun is Run for tests: any error fails t.
func (n *NS) MustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := n.Run(name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Sh runs a shell script inside the namespace, for multi-step setups.
func (n *NS) Sh(script string) (string, error) {
	return n.Run("sh", "-ec", script)
}

// Do runs fn with the calling goroutine's OS thread switched into the
// namespace, so sockets fn opens belong to it. The thread is discarded
// afterwards rather than switched back, so no other goroutine can inherit a
// half-switched thread.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Deliberately no UnlockOSThread: the thread dies with the goroutine.
		f, err := os.Open("/run/netns/" + n.Name)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", n.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
