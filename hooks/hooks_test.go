package hooks_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Each hook is run as its hypervisor runs it: the same argv, environment
// and stdin, with stdout and stderr on pipes the runner reads to EOF (as
// xenopsd and libvirtd do, so a detached child that kept them open would
// hold the migration up). Around the hook stand the real logger(1),
// writing to a syslog socket the test reads, and two stand-ins: announce,
// which records its argv and then hangs (for hangFor) or fails, and
// systemctl, which says whether the daemon is active (no systemd here).

// hangFor is how long the hanging stand-in announce runs. A hook that
// waited for it, or left it holding the runner's pipes, returns no sooner.
const hangFor = 120 * time.Second

// quick bounds how long a hook may hold its caller: far below hangFor, so
// waiting for announce fails, and far above what a loaded machine needs
// to run a shell script. That the hook did not wait is proven by order,
// not by this bound: checkDetached finds the announce it launched still
// running after the hook returned.
const quick = 20 * time.Second

type announceMode string

const (
	hang announceMode = "hang" // an announce stuck waiting for readiness
	fail announceMode = "fail" // an announce that gives up at once
)

type lab struct {
	t      *testing.T
	mode   announceMode
	dir    string
	bin    string
	rec    string
	syslog *syslogSink
}

func newLab(t *testing.T, mode announceMode, daemonActive bool) *lab {
	t.Helper()
	if _, err := exec.LookPath("logger"); err != nil {
		t.Skip("needs logger(1)")
	}
	// Short path: it holds a unix socket.
	dir, err := os.MkdirTemp("", "sahook")
	if err != nil {
		t.Fatal(err)
	}
	l := &lab{t: t, mode: mode, dir: dir, bin: filepath.Join(dir, "bin"), rec: filepath.Join(dir, "rec")}
	t.Cleanup(func() { l.killAnnounces(); os.RemoveAll(dir) })
	for _, d := range []string{l.bin, l.rec} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	l.syslog = newSyslogSink(t, filepath.Join(dir, "log.sock"))
	realLogger, _ := exec.LookPath("logger")

	behaviour := fmt.Sprintf("exec sleep %d", int(hangFor/time.Second))
	if mode == fail {
		behaviour = `echo "announce: no such port" >&2; exit 1`
	}
	rc := 3 // systemctl is-active: inactive
	if daemonActive {
		rc = 0
	}
	l.write("announce", fmt.Sprintf(`#!/bin/sh
f=%[1]s/announce.$$
for a in "$@"; do printf '%%s\n' "$a"; done > "$f.argv"
{ echo "sid=$(cut -d' ' -f6 /proc/$$/stat)"; echo "stdin=$(readlink /proc/$$/fd/0)"; } > "$f.proc"
mv "$f.argv" "$f"
%[2]s
`, l.rec, behaviour))
	l.write("logger", fmt.Sprintf("#!/bin/sh\nexec %s -u %s \"$@\"\n", realLogger, l.syslog.path))
	l.write("systemctl", fmt.Sprintf("#!/bin/sh\necho \"$*\" >> %s/systemctl\nexit %d\n", l.rec, rc))
	return l
}

func (l *lab) write(name, body string) {
	l.t.Helper()
	if err := os.WriteFile(filepath.Join(l.bin, name), []byte(body), 0o755); err != nil {
		l.t.Fatal(err)
	}
}

func (l *lab) path() string { return "PATH=" + l.bin + ":/usr/sbin:/usr/bin:/sbin:/bin" }

type result struct {
	code           int
	stdout, stderr string
	took           time.Duration
}

// run runs argv with env and stdin, and waits for exit and EOF on both
// output pipes, as a hypervisor's hook runner does.
func (l *lab) run(argv []string, env []string, stdin string) result {
	l.t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append([]string{l.path()}, env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String(), took: time.Since(start)}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		l.t.Fatal(err)
	}
	return r
}

// launches waits a moment for detached announces to record themselves and
// returns each one's argv.
func (l *lab) launches(want int) [][]string {
	l.t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	if want == 0 {
		deadline = time.Now().Add(300 * time.Millisecond)
	}
	var got [][]string
	for {
		got = got[:0]
		files, _ := filepath.Glob(filepath.Join(l.rec, "announce.*"))
		for _, f := range files {
			if strings.Contains(filepath.Base(f), ".argv") || strings.HasSuffix(f, ".proc") {
				continue
			}
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			got = append(got, strings.Split(strings.TrimRight(string(b), "\n"), "\n"))
		}
		if (want > 0 && len(got) >= want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	slices.SortFunc(got, func(a, b []string) int { return strings.Compare(strings.Join(a, " "), strings.Join(b, " ")) })
	return got
}

// checkDetached asserts every recorded announce runs in a session of its
// own with stdin on /dev/null: nothing ties it to the hook's runner. For
// the hanging stand-in it also asserts each is still running now, after
// the hook returned: the hook did not wait for it, and did not hold its
// caller until it ended.
func (l *lab) checkDetached() {
	l.t.Helper()
	mySID, _ := getsid()
	files, _ := filepath.Glob(filepath.Join(l.rec, "announce.*.proc"))
	if len(files) == 0 {
		l.t.Fatal("no announce process recorded")
	}
	for _, f := range files {
		b, _ := os.ReadFile(f)
		s := string(b)
		if !strings.Contains(s, "stdin=/dev/null") || strings.Contains(s, fmt.Sprintf("sid=%d\n", mySID)) {
			l.t.Errorf("announce not detached from the hook's caller: %s", s)
		}
		if l.mode != hang {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(filepath.Base(f), "announce."), ".proc"))
		if err != nil || pid <= 1 {
			l.t.Errorf("announce record %s names no pid", f)
			continue
		}
		// An ended one may linger as a zombie until something reaps it.
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err != nil || procState(string(st)) == "Z" {
			l.t.Errorf("the announce the hook launched (pid %d) had already ended when the hook returned: the hook waited for it", pid)
		}
	}
}

// procState is the state letter of a /proc/PID/stat line (after the
// parenthesised command name, which may hold spaces).
func procState(stat string) string {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(stat[i+1:])
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

func getsid() (int, error) {
	sid, _, errno := syscall.RawSyscall(syscall.SYS_GETSID, 0, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(sid), nil
}

// killAnnounces ends the stand-ins this lab started, by their recorded pids.
func (l *lab) killAnnounces() {
	files, _ := filepath.Glob(filepath.Join(l.rec, "announce.*.proc"))
	for _, f := range files {
		pid, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(filepath.Base(f), "announce."), ".proc"))
		if err == nil && pid > 1 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func (l *lab) systemctlCalls() string {
	b, _ := os.ReadFile(filepath.Join(l.rec, "systemctl"))
	return string(b)
}

func expectOK(t *testing.T, r result) {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("hook exited %d; stderr: %s", r.code, r.stderr)
	}
	if r.took > quick {
		t.Fatalf("hook held its caller for %v", r.took)
	}
}

// syslogSink is a syslog socket: every datagram logger(1) sends.
type syslogSink struct {
	path string
	mu   sync.Mutex
	msgs []string
}

func newSyslogSink(t *testing.T, path string) *syslogSink {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	s := &syslogSink{path: path}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 8192)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.msgs = append(s.msgs, string(buf[:n]))
			s.mu.Unlock()
		}
	}()
	return s
}

// expect waits for a message from tag selfannounce-hook containing each of
// the substrings.
func (s *syslogSink) expect(t *testing.T, subs ...string) string {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		s.mu.Lock()
		for _, m := range s.msgs {
			ok := strings.Contains(m, "selfannounce-hook")
			for _, sub := range subs {
				ok = ok && strings.Contains(m, sub)
			}
			if ok {
				s.mu.Unlock()
				return m
			}
		}
		all := strings.Join(s.msgs, "\n")
		s.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no syslog message with %q; got:\n%s", subs, all)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func script(t *testing.T, name string) string {
	t.Helper()
	p, err := filepath.Abs(name)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode()&0o111 == 0 {
		t.Fatalf("%s missing or not executable", p)
	}
	return p
}

func argvIs(t *testing.T, got [][]string, want ...[]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("announce launched %d times (%q), want %d (%q)", len(got), got, len(want), want)
	}
	for i := range want {
		if !slices.Equal(got[i], want[i]) {
			t.Fatalf("announce argv %q, want %q", got[i], want[i])
		}
	}
}
