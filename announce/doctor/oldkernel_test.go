package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// copyTree copies a fixture tree, symlinks as symlinks, so a test can
// delete from it what an older kernel or a partial copy lacks.
func copyTree(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
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
			return os.Symlink(target, out)
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(out, b, 0o644)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// trim removes every path matching the globs (relative to root, following
// the sys/class/net symlinks as the shell would) and fails if one matches
// nothing, so a test cannot pass by deleting a file that was never there.
func trim(t *testing.T, root string, globs ...string) {
	t.Helper()
	for _, g := range globs {
		ms, err := filepath.Glob(filepath.Join(root, g))
		if err != nil || len(ms) == 0 {
			t.Fatalf("trim %s: nothing matches (%v)", g, err)
		}
		for _, m := range ms {
			if err := os.RemoveAll(m); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func skips(r *Report) []string {
	var out []string
	for _, s := range r.Skipped {
		out = append(out, s.ID+" "+s.Object)
	}
	sort.Strings(out)
	return out
}

func skipReason(r *Report, id, object string) string {
	for _, s := range r.Skipped {
		if s.ID == id && s.Object == object {
			return s.Reason
		}
	}
	return ""
}

func runRoot(t *testing.T, root string) *Report {
	t.Helper()
	r, err := Run(context.Background(), Options{Root: root})
	if err != nil {
		t.Fatalf("a trimmed tree must not be fatal: %v", err)
	}
	return r
}

// Linux before 3.11 has no brport/learning: the learning check skips each
// VM port and says so, and every other check still runs.
func TestNoBrportLearning(t *testing.T) {
	root := copyTree(t, "testdata/vif-learning-off")
	trim(t, root, "sys/class/net/*/brport/learning")
	r := runRoot(t, root)
	if g := got(r); len(g) != 0 {
		t.Errorf("findings %v, want none", g)
	}
	wantSkips := []string{"agent ", "lacp-mismatch ", "vif-learning-off virbr1/vnet0"}
	if g := skips(r); !reflect.DeepEqual(g, wantSkips) {
		t.Errorf("skipped %q, want %q", g, wantSkips)
	}
	if why := skipReason(r, CheckVIFLearningOff, "virbr1/vnet0"); !strings.Contains(why, "brport/learning") || !strings.Contains(why, "3.11") {
		t.Errorf("reason %q does not name the attribute and the kernel", why)
	}

	// Other checks on the same bridge still find what they find.
	root = copyTree(t, "testdata/stp-forward-delay")
	trim(t, root, "sys/class/net/*/brport/learning")
	r = runRoot(t, root)
	if w := []want{{CheckSTPForwardDelay, "br0", Error}}; !reflect.DeepEqual(got(r), w) {
		t.Errorf("STP bridge without brport/learning: findings %v, want %v", got(r), w)
	}
}

// A kernel built without IGMP snooping has no multicast_* bridge files.
func TestNoMulticastAttributes(t *testing.T) {
	root := copyTree(t, "testdata/mld-snooping")
	trim(t, root, "sys/class/net/*/bridge/multicast_*")
	r := runRoot(t, root)
	if g := got(r); len(g) != 0 {
		t.Errorf("findings %v, want none", g)
	}
	if why := skipReason(r, CheckMLDSnooping, "br0"); !strings.Contains(why, "multicast_snooping") || !strings.Contains(why, "snooping") {
		t.Errorf("skipped %v: want mld-snooping br0 naming multicast_snooping", r.Skipped)
	}
}

// Bonds whose bonding/ files are gone: /proc/net/bonding still names the
// mode; when that is gone too, the bond checks skip that bond.
func TestNoBondingFiles(t *testing.T) {
	full := runRoot(t, "testdata/bridge-on-unsafe-bond")

	root := copyTree(t, "testdata/bridge-on-unsafe-bond")
	trim(t, root, "sys/class/net/*/bonding")
	if r := runRoot(t, root); !reflect.DeepEqual(got(r), got(full)) {
		t.Errorf("without sysfs bonding/: findings %v, want %v from /proc/net/bonding", got(r), got(full))
	}

	root = copyTree(t, "testdata/bridge-on-unsafe-bond")
	trim(t, root, "sys/class/net/bond*/bonding/mode")
	if r := runRoot(t, root); !reflect.DeepEqual(got(r), got(full)) {
		t.Errorf("without bonding/mode: findings %v, want %v", got(r), got(full))
	}

	trim(t, root, "proc/net/bonding", "sys/class/net/bond*/bonding/slaves")
	r := runRoot(t, root)
	if g := got(r); len(g) != 0 {
		t.Errorf("bond modes unknown: findings %v, want none", g)
	}
	for _, obj := range []string{"xenbr0/bond0", "xenbr1/bond1", "br100/bond2"} {
		if why := skipReason(r, CheckBridgeOnUnsafeBond, obj); !strings.Contains(why, "bonding/mode") {
			t.Errorf("no skip for %s naming bonding/mode: %v", obj, r.Skipped)
		}
	}
	// Without bonding/slaves the members' master links still tie the bond
	// to its bridge: the bond was found, not lost.
	h, err := ReadHost(os.DirFS(root))
	if err != nil {
		t.Fatal(err)
	}
	if b := h.Links["bond1"].Bond; b == nil || !reflect.DeepEqual(b.Members, []string{"eth2", "eth3"}) {
		t.Errorf("bond1 from master links: %+v", b)
	}
}

// Every attribute a check needs, deleted one at a time, skips that check
// for that object and nothing else; no deletion is fatal.
func TestEachMissingAttributeSkips(t *testing.T) {
	for _, tc := range []struct {
		tree, glob, id, object string
		// gone is the finding the deletion hides, when not id on object.
		gone string
	}{
		{"stp-forward-delay", "sys/class/net/br0/bridge/forward_delay", CheckSTPForwardDelay, "br0", ""},
		{"stp-forward-delay", "sys/class/net/br0/bridge/stp_state", CheckSTPForwardDelay, "br0", ""},
		{"vif-mtu-mismatch", "sys/class/net/vif3.0/mtu", CheckVIFMTUMismatch, "xenbr0/vif3.0", ""},
		{"vif-mtu-mismatch", "sys/class/net/vif3.0", CheckVIFMTUMismatch, "xenbr0/vif3.0", ""},
		{"fdb-ageing", "sys/class/net/br1/bridge/ageing_time", CheckFDBAgeing, "br1", ""},
		{"jumbo-management-bond", "sys/class/net/bond0/mtu", CheckJumboManagementBond, "xapi1/bond0", ""},
		{"jumbo-management-bond-route", "proc/net/route", CheckJumboManagementBond, "", "bond0"},
	} {
		t.Run(tc.tree+"-"+filepath.Base(tc.glob), func(t *testing.T) {
			full := runRoot(t, filepath.Join("testdata", tc.tree))
			root := copyTree(t, filepath.Join("testdata", tc.tree))
			trim(t, root, tc.glob)
			r := runRoot(t, root)
			gone := tc.object
			if tc.gone != "" {
				gone = tc.gone
			}
			var w []want
			for _, f := range got(full) {
				if f.id != tc.id || f.object != gone {
					w = append(w, f)
				}
			}
			if g := got(r); !reflect.DeepEqual(g, w) {
				t.Errorf("findings %v, want %v", g, w)
			}
			if skipReason(r, tc.id, tc.object) == "" {
				t.Errorf("skipped %v: want %s %q", r.Skipped, tc.id, tc.object)
			}
		})
	}
}

// A partial copy: /proc without /sys, or /sys without /proc, is reported
// with skips in both outputs and exits on findings alone.
func TestPartialRoot(t *testing.T) {
	root := copyTree(t, "testdata/stp-forward-delay")
	trim(t, root, "proc")
	var buf bytes.Buffer
	err := Execute(context.Background(), Options{Root: root}, JSON, &buf)
	if ee, ok := err.(*ExitError); !ok || ee.Code != 2 {
		t.Fatalf("sys only: %v, want the STP finding's exit 2", err)
	}
	var doc struct {
		Findings []Finding `json:"findings"`
		Skipped  []Skipped `json:"skipped"`
	}
	if err := json.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Findings) != 1 || doc.Findings[0].ID != CheckSTPForwardDelay {
		t.Errorf("findings %+v", doc.Findings)
	}
	if !strings.Contains(buf.String(), `"id": "jumbo-management-bond"`) || !strings.Contains(buf.String(), "proc/net/route") {
		t.Errorf("JSON does not list the management check as skipped for lack of /proc/net/route:\n%s", buf.String())
	}

	root = copyTree(t, "testdata/stp-forward-delay")
	trim(t, root, "sys")
	buf.Reset()
	if err := Execute(context.Background(), Options{Root: root}, Table, &buf); err != nil {
		t.Fatalf("proc only: %v", err)
	}
	for _, id := range Checks {
		if id != CheckAgent && !strings.Contains(buf.String(), "skipped "+id+":") {
			t.Errorf("text output does not list %s as skipped:\n%s", id, buf.String())
		}
	}
}

// Text output names the object of a per-object skip.
func TestSkippedText(t *testing.T) {
	root := copyTree(t, "testdata/mld-snooping")
	trim(t, root, "sys/class/net/*/bridge/multicast_*")
	var buf bytes.Buffer
	if err := Execute(context.Background(), Options{Root: root}, Table, &buf); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "skipped mld-snooping br0: no /sys/class/net/br0/bridge/multicast_snooping") {
		t.Errorf("output:\n%s", buf.String())
	}
}
