package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
)

type want struct {
	id, object string
	sev        Severity
}

func runFixture(t *testing.T, name string) *Report {
	t.Helper()
	r, err := Run(context.Background(), Options{Root: filepath.Join("testdata", name)})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func got(r *Report) []want {
	var out []want
	for _, f := range r.Findings {
		out = append(out, want{f.ID, f.Object, f.Severity})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id+out[i].object < out[j].id+out[j].object })
	return out
}

func TestFixtures(t *testing.T) {
	for _, tc := range []struct {
		tree string
		want []want
		exit int
	}{
		{"healthy", nil, 0},
		{"stp-forward-delay", []want{{CheckSTPForwardDelay, "br0", Error}}, 2},
		{"bridge-on-unsafe-bond", []want{
			{CheckBridgeOnUnsafeBond, "br100/bond2", Warning},
			{CheckBridgeOnUnsafeBond, "xenbr0/bond0", Warning},
			{CheckBridgeOnUnsafeBond, "xenbr1/bond1", Error},
		}, 2},
		{"jumbo-management-bond", []want{{CheckJumboManagementBond, "xapi1/bond0", Error}}, 2},
		{"jumbo-management-bond-route", []want{{CheckJumboManagementBond, "bond0", Warning}}, 1},
		// Listening is off without a Listener: the tree alone shows nothing.
		{"lacp-mismatch", nil, 0},
		{"vif-mtu-mismatch", []want{
			{CheckVIFMTUMismatch, "xenbr0/tap3.0", Warning},
			{CheckVIFMTUMismatch, "xenbr0/vif3.0", Error},
		}, 2},
		{"fdb-ageing", []want{
			{CheckFDBAgeing, "br0", Warning},
			{CheckFDBAgeing, "br1", Warning},
			{CheckFDBAgeing, "br2", Warning},
		}, 1},
		{"mld-snooping", []want{{CheckMLDSnooping, "br0", Warning}}, 1},
		{"vif-learning-off", []want{{CheckVIFLearningOff, "virbr1/vnet0", Warning}}, 1},
	} {
		t.Run(tc.tree, func(t *testing.T) {
			r := runFixture(t, tc.tree)
			if g := got(r); !reflect.DeepEqual(g, tc.want) {
				t.Errorf("findings %v, want %v", g, tc.want)
			}
			if c := r.ExitCode(); c != tc.exit {
				t.Errorf("exit code %d, want %d", c, tc.exit)
			}
			for _, f := range r.Findings {
				if f.Breaks == "" || f.Fix == "" || f.Detail == "" {
					t.Errorf("finding %s %s lacks breaks/fix/detail: %+v", f.ID, f.Object, f)
				}
			}
		})
	}
}

func TestFindingText(t *testing.T) {
	r := runFixture(t, "stp-forward-delay")
	f := r.Findings[0]
	for _, s := range []string{"forward_delay=15s", "30s", "not forwarding right now: vnet0"} {
		if !strings.Contains(f.Detail, s) {
			t.Errorf("detail %q lacks %q", f.Detail, s)
		}
	}
	r = runFixture(t, "bridge-on-unsafe-bond")
	for _, f := range r.Findings {
		if !strings.Contains(f.Breaks, "own address as source address") {
			t.Errorf("%s: breaks does not quote the kernel's message: %q", f.Object, f.Breaks)
		}
	}
	if d := r.Findings[0].Detail; r.Findings[0].Object != "br100/bond2" || !strings.Contains(d, "via bond2.100") {
		t.Errorf("VLAN path missing from %q", d)
	}
	r = runFixture(t, "jumbo-management-bond")
	if d := r.Findings[0].Detail; !strings.Contains(d, "MANAGEMENT_INTERFACE") || !strings.Contains(d, "9000") {
		t.Errorf("detail %q", d)
	}
}

func TestVMPortGlobsOption(t *testing.T) {
	// With only vif* counted as VM ports, br0's vnet0 is not a VM's and
	// br0 stops being a VM bridge.
	r, err := Run(context.Background(), Options{Root: "testdata/stp-forward-delay", VMPortGlobs: []string{"vif*"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Findings) != 0 {
		t.Errorf("findings %v", got(r))
	}
	if _, err := Run(context.Background(), Options{Root: "testdata/healthy", VMPortGlobs: []string{"vif["}}); err == nil {
		t.Error("malformed pattern accepted")
	}
}

func TestSwitchAgeingOption(t *testing.T) {
	// Against switches ageing at 1 h, br0's 1 h is right and br2's 10 s is
	// still far too short.
	r, err := Run(context.Background(), Options{Root: "testdata/fdb-ageing", SwitchAgeing: 3600e9})
	if err != nil {
		t.Fatal(err)
	}
	w := []want{{CheckFDBAgeing, "br1", Warning}, {CheckFDBAgeing, "br2", Warning}}
	if g := got(r); !reflect.DeepEqual(g, w) {
		t.Errorf("findings %v, want %v", g, w)
	}
}

func TestExecuteOutputs(t *testing.T) {
	var buf bytes.Buffer
	err := Execute(context.Background(), Options{Root: "testdata/vif-mtu-mismatch"}, JSON, &buf)
	var ee *ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("err %v, want exit 2", err)
	}
	var doc struct {
		Findings []map[string]string `json:"findings"`
	}
	if err := json.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatalf("%v: %s", err, buf.Bytes())
	}
	if len(doc.Findings) != 2 {
		t.Fatalf("findings %v", doc.Findings)
	}
	for _, k := range []string{"id", "object", "severity", "breaks", "fix", "detail"} {
		if doc.Findings[0][k] == "" {
			t.Errorf("JSON finding lacks %q: %v", k, doc.Findings[0])
		}
	}

	buf.Reset()
	err = Execute(context.Background(), Options{Root: "testdata/mld-snooping"}, Table, &buf)
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("err %v, want exit 1", err)
	}
	lines := strings.Split(buf.String(), "\n")
	if !strings.HasPrefix(lines[0], "FINDING") || !strings.HasPrefix(lines[1], "mld-snooping") {
		t.Fatalf("table:\n%s", buf.String())
	}
	// Aligned columns: each header column starts where the row's does.
	for _, col := range []string{"OBJECT", "SEVERITY", "BREAKS"} {
		i := strings.Index(lines[0], col)
		val := map[string]string{"OBJECT": "br0", "SEVERITY": "warning", "BREAKS": "IPv6"}[col]
		if !strings.HasPrefix(lines[1][i:], val) {
			t.Errorf("column %s at %d, row has %q there", col, i, lines[1][i:])
		}
	}

	buf.Reset()
	if err := Execute(context.Background(), Options{Root: "testdata/healthy"}, Table, &buf); err != nil {
		t.Fatalf("healthy host: %v", err)
	}
	if !strings.Contains(buf.String(), "No known traps found") || !strings.Contains(buf.String(), "skipped agent") {
		t.Errorf("output:\n%s", buf.String())
	}

	err = Execute(context.Background(), Options{Root: t.TempDir()}, Table, &buf)
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(err.Error(), "network devices") {
		t.Errorf("empty root: %v", err)
	}
	err = Execute(context.Background(), Options{Root: "testdata/nonexistent"}, Table, &buf)
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Errorf("missing root: %v", err)
	}
}

func TestFixturesUseRealSymlinks(t *testing.T) {
	// The reader must follow symlinks as on real sysfs; fixtures must have them.
	fi, err := os.Lstat("testdata/healthy/sys/class/net/xenbr0")
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSymlink == 0 {
		t.Fatal("fixture /sys/class/net/xenbr0 is not a symlink; run testdata/mkfixtures.sh")
	}
}
