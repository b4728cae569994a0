package vm

import (
	"strings"
	"testing"
)

// Inner output as go test's -test.v=test2json writes it: framing lines
// start with ^V, and output belongs to the test named last.
func TestParseTest2JSON(t *testing.T) {
	out := strings.Join([]string{
		"\x16=== RUN   TestInVMA",
		"\x16=== PAUSE TestInVMA",
		"\x16=== RUN   TestInVMB",
		"    b_test.go:1: from B",
		"\x16=== RUN   TestInVMB/sub",
		"    b_test.go:2: from B/sub",
		"\x16    --- FAIL: TestInVMB/sub (0.00s)",
		"\x16--- FAIL: TestInVMB (0.01s)",
		"\x16=== CONT  TestInVMA",
		"    a_test.go:1: from A",
		"\x16--- SKIP: TestInVMA (0.00s)",
		"\x16=== RUN   TestInVMC",
		"panic: boom",
		"\x16FAIL",
	}, "\n")
	root := parseTest2JSON([]byte(out))
	names := []string{}
	for _, c := range root.children {
		names = append(names, c.name)
	}
	if got := strings.Join(names, ","); got != "TestInVMA,TestInVMB,TestInVMC" {
		t.Fatalf("top-level tests %s", got)
	}
	a, b, c := root.children[0], root.children[1], root.children[2]
	if a.result != "SKIP" || b.result != "FAIL" || c.result != "" {
		t.Errorf("results %q %q %q", a.result, b.result, c.result)
	}
	if !strings.Contains(a.output.String(), "from A") || strings.Contains(a.output.String(), "from B") {
		t.Errorf("A's output %q", a.output.String())
	}
	if len(b.children) != 1 || b.children[0].result != "FAIL" || !strings.Contains(b.children[0].output.String(), "from B/sub") {
		t.Errorf("B's subtest %+v", b.children)
	}
	if !strings.Contains(c.output.String(), "panic: boom") {
		t.Errorf("the panic is not C's output: %q", c.output.String())
	}
	if !root.failed() {
		t.Error("a failed subtest does not fail the tree")
	}
}
