// Package proctest runs real programs inside network namespaces for
// end-to-end tests: it keeps their output and JSON log records, bounds
// their waits, stops them at test end even when the test process itself
// dies, and scrapes their Prometheus endpoints from inside the namespace.
package proctest

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/internal/netlab"
)

// Log is one line of a program's stderr, decoded when it is a JSON object.
type Log struct {
	At     time.Time // the record's "ts", when RFC 3339
	Msg    string    // the record's "msg", or the whole line when not JSON
	Level  string
	Fields map[string]any // nil when the line is not JSON
	Raw    string
}

// Str is field k when it is a string.
func (l Log) Str(k string) string { s, _ := l.Fields[k].(string); return s }

// Num is field k when it is a number.
func (l Log) Num(k string) float64 { f, _ := l.Fields[k].(float64); return f }

// Msg is a predicate for JSON records with message msg.
func Msg(msg string) func(Log) bool {
	return func(l Log) bool { return l.Fields != nil && l.Msg == msg }
}

// Result is how a program ended.
type Result struct {
	Stdout, Stderr string
	// Output is stdout and stderr interleaved as written.
	Output string
	Code   int
	Took   time.Duration
	logs   []Log
}

// Logs returns the stderr lines that match pred (all when nil).
func (r Result) Logs(pred func(Log) bool) []Log { return filter(r.logs, pred) }

// LastLine is the final line of Output: where a CLI's error goes.
func (r Result) LastLine() string {
	lines := strings.Split(strings.TrimRight(r.Output, "\n"), "\n")
	return lines[len(lines)-1]
}

// Proc is a program running in a namespace.
type Proc struct {
	Cmd   *exec.Cmd
	Start time.Time

	mu                     sync.Mutex
	stdout, stderr, output bytes.Buffer
	partial                []byte // stderr after its last newline
	logs                   []Log
	exited                 chan struct{}
	err                    error
	end                    time.Time
}

// Start runs name with args inside ns. A program still running at test end
// is killed before netlab removes the namespace, and the kernel kills it
// should the test process die first (a -timeout panic).
func Start(t testing.TB, ns *netlab.NS, name string, args ...string) *Proc {
	t.Helper()
	return StartCmd(t, ns.Cmd(name, args...))
}

// StartCmd is Start for a prepared command; its Stdout and Stderr are
// taken over.
func StartCmd(t testing.TB, cmd *exec.Cmd) *Proc {
	t.Helper()
	p := &Proc{Cmd: cmd, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = stream{p, false}, stream{p, true}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	// The kernel sends the death signal when the forking thread exits, not
	// the process, and netlab's Do retires threads; so the fork happens on
	// a thread locked until the program exits. `ip netns exec` execs its
	// command in place, and the signal survives exec.
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		p.Start = time.Now()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		p.end = time.Now()
		p.mu.Lock()
		if len(p.partial) > 0 {
			p.logs = append(p.logs, parseLog(string(p.partial)))
			p.partial = nil
		}
		p.mu.Unlock()
		close(p.exited)
	}()
	if err := <-started; err != nil {
		t.Fatalf("start %s: %v", strings.Join(cmd.Args, " "), err)
	}
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

type stream struct {
	p      *Proc
	stderr bool
}

func (s stream) Write(b []byte) (int, error) {
	p := s.p
	p.mu.Lock()
	defer p.mu.Unlock()
	p.output.Write(b)
	if !s.stderr {
		return p.stdout.Write(b)
	}
	p.stderr.Write(b)
	p.partial = append(p.partial, b...)
	for {
		i := bytes.IndexByte(p.partial, '\n')
		if i < 0 {
			break
		}
		p.logs = append(p.logs, parseLog(string(p.partial[:i])))
		p.partial = p.partial[i+1:]
	}
	return len(b), nil
}

func parseLog(s string) Log {
	l := Log{Raw: s, Msg: s}
	var m map[string]any
	if json.Unmarshal([]byte(s), &m) == nil {
		l.Fields = m
		l.Msg, _ = m["msg"].(string)
		l.Level, _ = m["level"].(string)
		if ts, ok := m["ts"].(string); ok {
			l.At, _ = time.Parse(time.RFC3339Nano, ts)
		}
	}
	return l
}

// Stdout is what the program wrote to stdout so far.
func (p *Proc) Stdout() string { p.mu.Lock(); defer p.mu.Unlock(); return p.stdout.String() }

// Stderr is what the program wrote to stderr so far.
func (p *Proc) Stderr() string { p.mu.Lock(); defer p.mu.Unlock(); return p.stderr.String() }

// Output is stdout and stderr so far, interleaved as written.
func (p *Proc) Output() string { p.mu.Lock(); defer p.mu.Unlock(); return p.output.String() }

// Exited is closed once the program has exited and its output is read.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Err is the program's exit error (nil for status 0) once Exited is closed.
func (p *Proc) Err() error {
	select {
	case <-p.exited:
		return p.err
	default:
		return nil
	}
}

// Logs returns the stderr lines so far that match pred (all when nil).
func (p *Proc) Logs(pred func(Log) bool) []Log {
	p.mu.Lock()
	defer p.mu.Unlock()
	return filter(p.logs, pred)
}

func filter(ls []Log, pred func(Log) bool) []Log {
	var out []Log
	for _, l := range ls {
		if pred == nil || pred(l) {
			out = append(out, l)
		}
	}
	return out
}

// WaitLogs waits until at least n stderr lines match pred, the program
// exits, or timeout passes, and returns the matching lines.
func (p *Proc) WaitLogs(timeout time.Duration, n int, pred func(Log) bool) []Log {
	end := time.Now().Add(timeout)
	for {
		ls := p.Logs(pred)
		if len(ls) >= n || time.Now().After(end) {
			return ls
		}
		select {
		case <-p.exited:
			return p.Logs(pred)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Wait waits up to d for the program to exit; one that does not is killed
// and fails the test, as does one that could not be waited for.
func (p *Proc) Wait(t testing.TB, d time.Duration) Result {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(d):
		p.Cmd.Process.Kill()
		<-p.exited
		t.Fatalf("%s did not exit within %v; stderr: %s", strings.Join(p.Cmd.Args, " "), d, p.Stderr())
	}
	var ee *exec.ExitError
	if p.err != nil && !errors.As(p.err, &ee) {
		t.Fatalf("%s: %v", strings.Join(p.Cmd.Args, " "), p.err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return Result{
		Stdout: p.stdout.String(), Stderr: p.stderr.String(), Output: p.output.String(),
		Code: p.Cmd.ProcessState.ExitCode(), Took: p.end.Sub(p.Start),
		logs: append([]Log(nil), p.logs...),
	}
}

// Signal sends sig, unless the program has already exited.
func (p *Proc) Signal(sig os.Signal) error {
	if err := p.Cmd.Process.Signal(sig); err != nil {
		select {
		case <-p.exited:
			return nil
		default:
			return err
		}
	}
	return nil
}

// ErrKilled is what Stop returns for a program that ignored SIGTERM.
var ErrKilled = errors.New("ignored SIGTERM, killed")

// Stop sends SIGTERM and waits up to timeout; a program that ignores it is
// killed and ErrKilled returned. Otherwise it returns the exit error.
func (p *Proc) Stop(timeout time.Duration) error {
	select {
	case <-p.exited:
		return p.err
	default:
	}
	p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return p.err
	case <-time.After(timeout):
		p.Cmd.Process.Kill()
		<-p.exited
		return ErrKilled
	}
}
