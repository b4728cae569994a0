//go:build linux

package qemu_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/proctest"
)

// vm is one QEMU process: a diskless q35 guest whose only device is a
// virtio-net NIC on a tap. Without a disk or a NIC boot ROM, SeaBIOS finds
// nothing to boot and the guest never sends a frame of its own, so every
// frame from it is QEMU's announce-self: the silent VM of the incidents.
type vm struct {
	name    string
	cmd     *exec.Cmd
	qmpPath string
	pidFile string
	proc    *proctest.Proc
	qmp     *qmpConn
}

// startVM runs QEMU inside ns with its NIC on tap. extra is appended to the
// command line (-incoming for the destination). The process is killed and
// reaped when t ends, pass or fail.
func startVM(t *testing.T, ns *netlab.NS, dir, name, tap string, extra ...string) *vm {
	t.Helper()
	v := &vm{
		name:    name,
		qmpPath: filepath.Join(dir, name+".qmp"),
		pidFile: filepath.Join(dir, name+".pid"),
	}
	args := []string{
		"-name", name,
		"-M", "q35", "-accel", "tcg", "-nodefaults", "-display", "none", "-m", "64",
		"-netdev", "tap,id=n0,ifname=" + tap + ",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=n0,mac=" + guestMAC + ",romfile=",
		"-qmp", "unix:" + v.qmpPath + ",server=on,wait=off",
		"-pidfile", v.pidFile,
	}
	args = append(args, extra...)
	v.cmd = ns.Cmd("qemu-system-x86_64", args...)
	v.proc = proctest.StartCmd(t, v.cmd)
	t.Cleanup(func() { v.stop(t) })

	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := dialQMP(v.qmpPath)
		if err == nil {
			v.qmp = c
			return v
		}
		select {
		case <-v.proc.Exited():
			t.Fatalf("%s exited at start: %v\n%s", name, v.cmd.ProcessState, v.proc.Output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: QMP not reachable: %v\n%s", name, err, v.proc.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop kills QEMU. `ip netns exec` execs QEMU in place, so the pid is
// QEMU's; the pidfile is checked in case a wrapper ever sits in between.
func (v *vm) stop(t *testing.T) {
	if v.qmp != nil {
		v.qmp.Close()
	}
	pids := []int{v.cmd.Process.Pid}
	if b, err := os.ReadFile(v.pidFile); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid != pids[0] {
			pids = append(pids, pid)
		}
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	select {
	case <-v.proc.Exited():
	case <-time.After(10 * time.Second):
		t.Errorf("%s (pid %d) did not exit after SIGKILL", v.name, pids[0])
	}
	if t.Failed() {
		if s := strings.TrimSpace(v.proc.Output()); s != "" {
			t.Logf("%s output:\n%s", v.name, s)
		}
	}
}

// qmpConn speaks QMP: one JSON object per message, asynchronous events
// interleaved with command replies.
type qmpConn struct {
	c   net.Conn
	dec *json.Decoder
	mu  sync.Mutex
}

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string          `json:"event"`
	QMP   json.RawMessage `json:"QMP"`
}

func dialQMP(path string) (*qmpConn, error) {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return nil, err
	}
	q := &qmpConn{c: c, dec: json.NewDecoder(c)}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var greet qmpReply
	if err := q.dec.Decode(&greet); err != nil || greet.QMP == nil {
		c.Close()
		return nil, fmt.Errorf("qmp greeting: %v", err)
	}
	if _, err := q.do("qmp_capabilities", nil); err != nil {
		c.Close()
		return nil, err
	}
	return q, nil
}

// do runs one command and returns its "return" value; events are skipped.
func (q *qmpConn) do(cmd string, args any) (json.RawMessage, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	msg := map[string]any{"execute": cmd}
	if args != nil {
		msg["arguments"] = args
	}
	q.c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := json.NewEncoder(q.c).Encode(msg); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	for {
		var r qmpReply
		if err := q.dec.Decode(&r); err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		switch {
		case r.Event != "":
			continue
		case r.Error != nil:
			return nil, fmt.Errorf("qmp %s: %s: %s", cmd, r.Error.Class, r.Error.Desc)
		case r.Return != nil:
			return r.Return, nil
		}
	}
}

func (q *qmpConn) Close() error { return q.c.Close() }

// status is query-status's "status": "inmigrate", "running", "postmigrate"...
func (v *vm) status() (string, error) {
	raw, err := v.qmp.do("query-status", nil)
	if err != nil {
		return "", err
	}
	var s struct {
		Status string `json:"status"`
	}
	err = json.Unmarshal(raw, &s)
	return s.Status, err
}

type migrationInfo struct {
	Status    string `json:"status"`
	TotalTime int64  `json:"total-time"` // ms
	Downtime  int64  `json:"downtime"`   // ms
	ErrorDesc string `json:"error-desc"`
}

// migrate sends v's state to uri and waits for the source to finish.
func (v *vm) migrate(uri string, timeout time.Duration) (migrationInfo, error) {
	if _, err := v.qmp.do("migrate", map[string]any{"uri": uri}); err != nil {
		return migrationInfo{}, err
	}
	deadline := time.Now().Add(timeout)
	for {
		raw, err := v.qmp.do("query-migrate", nil)
		if err != nil {
			return migrationInfo{}, err
		}
		var mi migrationInfo
		if err := json.Unmarshal(raw, &mi); err != nil {
			return mi, err
		}
		switch mi.Status {
		case "completed":
			return mi, nil
		case "failed", "cancelled":
			return mi, fmt.Errorf("migration %s: %s", mi.Status, mi.ErrorDesc)
		}
		if time.Now().After(deadline) {
			return mi, errors.New("migration still " + mi.Status + " after " + timeout.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
