package packaging_test

import (
	"encoding/json"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/selfannounce/selfannounce/announce/metrics"
)

// The operator docs and the Grafana dashboard name metrics by hand; they
// must name the ones the daemon exports, all of them in operations.md.
func TestDocsNameRealMetrics(t *testing.T) {
	m := metrics.New()
	// A vector without a child is not gathered; give each one a child.
	m.Ports.WithLabelValues("ready")
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, f := range fams {
		if strings.HasPrefix(f.GetName(), "selfannounce_") {
			exported[f.GetName()] = true
		}
	}
	if len(exported) == 0 {
		t.Fatal("metrics.New exports no selfannounce_ metrics")
	}
	name := regexp.MustCompile(`selfannounce_[a-z_]+[a-z]`)
	strip := regexp.MustCompile(`_(bucket|sum|count)$`)
	for _, doc := range []string{"../docs/operations.md", "../docs/grafana-dashboard.json", "../docs/troubleshooting.md", "../docs/architecture.md"} {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		named := map[string]bool{}
		for _, m := range name.FindAllString(string(b), -1) {
			if !exported[m] {
				m = strip.ReplaceAllString(m, "")
			}
			named[m] = true
			if !exported[m] {
				t.Errorf("%s names %s, which the daemon does not export", doc, m)
			}
		}
		if doc == "../docs/operations.md" {
			var missing []string
			for m := range exported {
				if !named[m] {
					missing = append(missing, m)
				}
			}
			sort.Strings(missing)
			if len(missing) > 0 {
				t.Errorf("operations.md does not document %v", missing)
			}
		}
	}
}

func TestGrafanaDashboardIsValid(t *testing.T) {
	b, err := os.ReadFile("../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard is not valid JSON: %v", err)
	}
	if d.Title == "" || d.UID == "" {
		t.Error("dashboard needs a title and a uid to import")
	}
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			if strings.Count(q.Expr, "(") != strings.Count(q.Expr, ")") || strings.Count(q.Expr, "{") != strings.Count(q.Expr, "}") {
				t.Errorf("panel %q: unbalanced query %q", p.Title, q.Expr)
			}
		}
	}
}
