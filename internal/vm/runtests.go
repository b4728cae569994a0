package vm

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/internal/testbin"
	"github.com/selfannounce/selfannounce/internal/testenv"
)

// EnvRun narrows the inner -test.run pattern of every RunTests, to run a
// few inner tests by hand: SELFANNOUNCE_VM_RUN='^TestInVMBond' go test
// -run TestKernelVM ./e2e/kernel.
const EnvRun = "SELFANNOUNCE_VM_RUN"

// EnvInside is set to 1 in the VM's environment.
const EnvInside = "SELFANNOUNCE_IN_VM"

// Inside says the process runs inside a VM booted by this package.
func Inside() bool { return os.Getenv(EnvInside) == "1" }

// RequireInside skips t outside the VM: there the package's RunTests
// wrapper runs it inside, and reports it under its own name.
func RequireInside(t testing.TB) {
	t.Helper()
	if !Inside() {
		t.Skip("runs inside the kernel VM, under the package's VM test")
	}
}

// RunTests boots one VM for the test package and runs the package's own
// test binary in it, with -test.run=pattern. Every inner test is reported
// as a subtest of t, with its output, pass, fail or skip. The announce
// binary is built here on the host (internal/testbin) and handed in: the
// VM never compiles.
func RunTests(t *testing.T, o Options, pattern string) {
	t.Helper()
	if Inside() {
		t.Skip("already inside the VM")
	}
	Require(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cwd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	announce := testbin.Announce(t)
	if o.Name == "" {
		o.Name = t.Name()
	}
	if o.Timeout == 0 {
		o.Timeout = 20 * time.Minute
	}
	if d, ok := t.Deadline(); ok {
		// Leave the test binary time to report before go test kills it.
		if left := time.Until(d) - 20*time.Second; left < o.Timeout {
			o.Timeout = left
		}
	}
	inner := o.Timeout - 15*time.Second
	if inner < time.Minute {
		inner = time.Minute
	}
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	copies := map[string]string{"bin/test.bin": exe, "bin/announce": announce}
	for k, v := range o.Copy {
		copies[k] = v
	}
	o.Copy = copies
	env := map[string]string{
		testbin.EnvAnnounce: GuestRunDir + "/bin/announce",
		"VM_CWD":            cwd,
	}
	if v := os.Getenv(testenv.EnvRequire); v != "" {
		env[testenv.EnvRequire] = v
	}
	for k, v := range o.Env {
		env[k] = v
	}
	o.Env = env
	if p := os.Getenv(EnvRun); p != "" {
		pattern = p
	}
	args := []string{"-test.run=" + shQuote(pattern), "-test.v=test2json", "-test.count=1", "-test.timeout=" + inner.String()}
	if testing.Short() {
		args = append(args, "-test.short")
	}
	o.Script = fmt.Sprintf("exec %s/bin/test.bin %s > $VM_RESULTS/test.out 2>&1\n", GuestRunDir, strings.Join(args, " ")) + o.Script

	res, err := Run(context.Background(), o)
	if res != nil {
		t.Logf("vm %s: boot %v, total %v, console %s", o.Name, res.Boot.Round(time.Millisecond), res.Total.Round(time.Millisecond), res.Console)
	}
	var tree *node
	if res != nil {
		if out, rerr := os.ReadFile(filepath.Join(res.Dir, "test.out")); rerr == nil {
			tree = parseTest2JSON(out)
			for _, c := range tree.children {
				replay(t, c)
			}
		}
	}
	if err != nil {
		t.Fatalf("vm: %v", err)
	}
	if tree == nil || len(tree.children) == 0 {
		t.Fatalf("no test ran inside the VM (pattern %q, exit %d)\n--- console tail ---\n%s", pattern, res.Exit, Tail(res.Console, 40))
	}
	if res.Exit != 0 && !tree.failed() {
		t.Fatalf("inner test binary exited %d\n--- its output ---\n%s\n--- console tail ---\n%s", res.Exit, tailString(tree.output.String(), 40), Tail(res.Console, 40))
	}
}

// node is one inner test (the root holds the binary's own output).
type node struct {
	name     string
	result   string // "PASS", "FAIL", "SKIP" or "" when it never ended
	output   strings.Builder
	children []*node
	byName   map[string]*node
}

func (n *node) child(name string) *node {
	if n.byName == nil {
		n.byName = map[string]*node{}
	}
	if c, ok := n.byName[name]; ok {
		return c
	}
	c := &node{name: name}
	n.byName[name] = c
	n.children = append(n.children, c)
	return c
}

func (n *node) failed() bool {
	if n.result == "FAIL" {
		return true
	}
	for _, c := range n.children {
		if c.failed() {
			return true
		}
	}
	return false
}

// parseTest2JSON reads -test.v=test2json output: framing lines start with
// ^V, and other lines belong to the test named last.
func parseTest2JSON(b []byte) *node {
	root := &node{}
	find := func(full string) *node {
		n := root
		for _, part := range strings.Split(full, "/") {
			n = n.child(part)
		}
		return n
	}
	cur := root
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "\x16") {
			cur.output.WriteString(line + "\n")
			continue
		}
		frame := strings.TrimPrefix(line, "\x16")
		trimmed := strings.TrimLeft(frame, " ")
		switch {
		case strings.HasPrefix(trimmed, "=== RUN"), strings.HasPrefix(trimmed, "=== NAME"),
			strings.HasPrefix(trimmed, "=== CONT"), strings.HasPrefix(trimmed, "=== PAUSE"):
			f := strings.Fields(trimmed)
			if len(f) >= 3 {
				cur = find(f[2])
			} else {
				cur = root
			}
		case strings.HasPrefix(trimmed, "--- PASS:"), strings.HasPrefix(trimmed, "--- FAIL:"), strings.HasPrefix(trimmed, "--- SKIP:"):
			f := strings.Fields(trimmed)
			if len(f) >= 3 {
				n := find(f[2])
				n.result = strings.TrimSuffix(f[1], ":")
				cur = n
			}
		default:
			// PASS, FAIL, ok lines of the binary itself.
			root.output.WriteString(frame + "\n")
			cur = root
		}
	}
	return root
}

func replay(t *testing.T, n *node) {
	t.Run(n.name, func(t *testing.T) {
		if out := strings.TrimRight(n.output.String(), "\n"); out != "" {
			t.Log("in the VM:\n" + out)
		}
		for _, c := range n.children {
			replay(t, c)
		}
		switch n.result {
		case "FAIL":
			t.Fail()
		case "SKIP":
			t.SkipNow()
		case "":
			t.Error("did not finish inside the VM")
		}
	})
}

func tailString(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
