// Package doctor checks a hypervisor host for the setups that swallow
// migration announcements or break a migrated VM's traffic: STP delays on VM
// bridges, bridges on bonds that reflect broadcasts, jumbo management bonds,
// switch LACP facing a non-LACP bond, MTU and FDB mismatches, and a daemon
// that is not announcing. Every finding names what it breaks and the fix.
//
// The host is read from /sys, /proc and /etc under a root directory, so
// tests run the same code on fixture trees laid out like real hosts.
package doctor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Severity is how badly a finding hurts.
type Severity string

const (
	// Error: traffic to or from VMs is lost, or a host cannot serve VMs.
	Error Severity = "error"
	// Warning: traffic is lost only in some cases the host cannot see, or
	// degrades rather than stops.
	Warning Severity = "warning"
)

// Check ids: stable, for scripts and docs/troubleshooting.md.
const (
	CheckSTPForwardDelay     = "stp-forward-delay"
	CheckBridgeOnUnsafeBond  = "bridge-on-unsafe-bond"
	CheckJumboManagementBond = "jumbo-management-bond"
	CheckLACPMismatch        = "lacp-mismatch"
	CheckVIFMTUMismatch      = "vif-mtu-mismatch"
	CheckFDBAgeing           = "fdb-ageing"
	CheckAgent               = "agent"
	CheckMLDSnooping         = "mld-snooping"
	CheckVIFLearningOff      = "vif-learning-off"
)

// Checks lists every check id in the order findings are reported.
var Checks = []string{
	CheckSTPForwardDelay, CheckBridgeOnUnsafeBond, CheckJumboManagementBond,
	CheckLACPMismatch, CheckVIFMTUMismatch, CheckFDBAgeing, CheckMLDSnooping,
	CheckVIFLearningOff, CheckAgent,
}

// Finding is one trap found on the host.
type Finding struct {
	ID       string   `json:"id"`
	Object   string   `json:"object"`
	Severity Severity `json:"severity"`
	Breaks   string   `json:"breaks"`
	Fix      string   `json:"fix"`
	Detail   string   `json:"detail"`
}

// Skipped records a check that did not run and why, so "no findings" is
// never mistaken for "checked and clean".
type Skipped struct {
	ID string `json:"id"`
	// Object is the bridge, port or bond the check could not look at; ""
	// when the check did not run at all.
	Object string `json:"object,omitempty"`
	Reason string `json:"reason"`
}

// Report is the result of a run.
type Report struct {
	Findings []Finding `json:"findings"`
	Skipped  []Skipped `json:"skipped,omitempty"`
}

// DefaultVMPortGlobs match the port names Xen (vif, tap), XenServer (tap)
// and libvirt (vnet) give VM interfaces.
var DefaultVMPortGlobs = []string{"vif*", "tap*", "vnet*"}

// DefaultSwitchAgeing is the MAC ageing time most switches ship with, and
// the Linux bridge default.
const DefaultSwitchAgeing = 300 * time.Second

// DefaultMetricsURL is where the selfannounce daemon serves its metrics.
const DefaultMetricsURL = "http://127.0.0.1:9474/metrics"

// Options configure a run. The zero value checks the live host without
// listening for LACP and without asking the daemon.
type Options struct {
	// Root is where /sys, /proc and /etc are read from; "" means "/".
	Root string
	// VMPortGlobs decide which bridge ports are VMs' (path.Match patterns).
	VMPortGlobs []string
	// SwitchAgeing is the upstream switches' MAC ageing time.
	SwitchAgeing time.Duration
	// MetricsURL is the daemon's metrics endpoint; "" skips the agent check.
	MetricsURL string
	// HTTPClient fetches the metrics; nil means a client with a 3 s timeout.
	HTTPClient *http.Client
	// Listener captures LACP frames on bond members; nil skips listening.
	Listener LACPListener
	// ListenTime is how long Listener listens (default 3 s). Switches send
	// LACPDUs every second at the fast rate but every 30 s at the slow one,
	// so only a listen over 30 s proves a member quiet.
	ListenTime time.Duration
	// Now is the clock for the agent check; nil means time.Now.
	Now func() time.Time
}

func (o *Options) defaults() {
	if o.Root == "" {
		o.Root = "/"
	}
	if len(o.VMPortGlobs) == 0 {
		o.VMPortGlobs = DefaultVMPortGlobs
	}
	if o.SwitchAgeing <= 0 {
		o.SwitchAgeing = DefaultSwitchAgeing
	}
	if o.ListenTime <= 0 {
		o.ListenTime = 3 * time.Second
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: 3 * time.Second}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Run checks the host and returns every finding. An error means the host
// could not be read at all, not that something was found.
func Run(ctx context.Context, o Options) (*Report, error) {
	o.defaults()
	for _, g := range o.VMPortGlobs {
		if _, err := filepath.Match(g, ""); err != nil {
			return nil, fmt.Errorf("bad VM port pattern %q", g)
		}
	}
	st, err := os.Stat(o.Root)
	if err != nil {
		return nil, fmt.Errorf("root %s: %w", o.Root, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("root %s is not a directory", o.Root)
	}
	h, err := ReadHost(os.DirFS(o.Root))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", o.Root, err)
	}
	r := &Report{Findings: []Finding{}}
	c := &checker{h: h, o: &o}
	add := func(fs []Finding) {
		r.Findings = append(r.Findings, fs...)
		r.Skipped = append(r.Skipped, c.skipped...)
		c.skipped = nil
	}
	if why, ok := h.Unread["sys/class/net"]; ok {
		// A copy of /proc without /sys: nothing to look at but the daemon.
		for _, id := range Checks {
			if id != CheckAgent {
				r.Skipped = append(r.Skipped, Skipped{ID: id, Reason: "no /sys/class/net: " + why})
			}
		}
	} else {
		add(c.stpForwardDelay())
		add(c.bridgeOnUnsafeBond())
		add(c.jumboManagementBond())
		if o.Listener == nil {
			r.Skipped = append(r.Skipped, Skipped{ID: CheckLACPMismatch, Reason: "not listening for LACP frames (--no-listen, or --root reads another host's files)"})
		} else {
			f, err := c.lacpMismatch(ctx)
			add(f)
			if err != nil {
				// Partial results still count; the skip says why some are missing.
				r.Skipped = append(r.Skipped, Skipped{ID: CheckLACPMismatch, Reason: err.Error()})
			}
		}
		add(c.vifMTUMismatch())
		add(c.fdbAgeing())
		add(c.mldSnooping())
		add(c.vifLearningOff())
	}
	if o.MetricsURL == "" {
		r.Skipped = append(r.Skipped, Skipped{ID: CheckAgent, Reason: "no daemon to ask (--root without --metrics)"})
	} else {
		add(checkAgent(ctx, o.HTTPClient, o.MetricsURL, o.Now()))
	}
	return r, nil
}

// ExitCode is 0 with no findings, 1 with warnings only, 2 with any error.
func (r *Report) ExitCode() int {
	code := 0
	for _, f := range r.Findings {
		switch f.Severity {
		case Error:
			return 2
		case Warning:
			code = 1
		}
	}
	return code
}

// Summary is a one-line count of the findings.
func (r *Report) Summary() string {
	var errs, warns int
	for _, f := range r.Findings {
		if f.Severity == Error {
			errs++
		} else {
			warns++
		}
	}
	return fmt.Sprintf("%d %s, %d %s", errs, plural(errs, "error"), warns, plural(warns, "warning"))
}

func plural(n int, s string) string {
	if n == 1 {
		return s
	}
	return s + "s"
}

// WriteJSON writes {"findings":[...]} (and "skipped" when checks were skipped).
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(r)
}

// WriteTable writes the findings as an aligned table, then each finding's
// detail, then the skipped checks.
func (r *Report) WriteTable(w io.Writer) error {
	if len(r.Findings) == 0 {
		fmt.Fprintln(w, "No known traps found.")
	} else {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "FINDING\tOBJECT\tSEVERITY\tBREAKS\tFIX")
		for _, f := range r.Findings {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", f.ID, f.Object, f.Severity, oneLine(f.Breaks), oneLine(f.Fix))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(w)
		for _, f := range r.Findings {
			if f.Detail != "" {
				fmt.Fprintf(w, "%s %s: %s\n", f.ID, f.Object, oneLine(f.Detail))
			}
		}
		fmt.Fprintf(w, "%s (see docs/troubleshooting.md).\n", r.Summary())
	}
	for _, s := range r.Skipped {
		obj := ""
		if s.Object != "" {
			obj = " " + s.Object
		}
		if _, err := fmt.Fprintf(w, "skipped %s%s: %s\n", s.ID, obj, s.Reason); err != nil {
			return err
		}
	}
	return nil
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// ExitError carries the process exit status out of a command: 1 or 2 for
// findings, 2 for usage errors and failures to read the host.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// ExitCode is what the process should exit with.
func (e *ExitError) ExitCode() int { return e.Code }

// Output selects the report format for Execute.
type Output int

const (
	Table Output = iota
	JSON
)

// Execute runs the doctor, writes the report to w and turns the outcome into
// the documented exit status: nil for a clean host, *ExitError otherwise.
func Execute(ctx context.Context, o Options, out Output, w io.Writer) error {
	r, err := Run(ctx, o)
	if err != nil {
		return &ExitError{Code: 2, Err: err}
	}
	if out == JSON {
		err = r.WriteJSON(w)
	} else {
		err = r.WriteTable(w)
	}
	if err != nil {
		return &ExitError{Code: 2, Err: err}
	}
	if code := r.ExitCode(); code != 0 {
		return &ExitError{Code: code, Err: errors.New("doctor found " + r.Summary())}
	}
	return nil
}

// sortedLinks returns the host's links in name order, for stable output.
func (h *Host) sortedLinks() []*Link {
	ls := make([]*Link, 0, len(h.Links))
	for _, l := range h.Links {
		ls = append(ls, l)
	}
	sort.Slice(ls, func(i, j int) bool { return ls[i].Name < ls[j].Name })
	return ls
}
