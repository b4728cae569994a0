package cli

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"

	"github.com/selfannounce/selfannounce/announce/config"
)

// manSection is 8: announce is a system administration command and the
// daemon runs as root.
const manSection = "8"

// NewGendocsCommand builds the hidden command the packaging uses to write
// man pages and shell completions from the live command tree, so neither can
// drift from the flags the binary really accepts.
func NewGendocsCommand() *cobra.Command {
	var manDir, complDir string
	c := &cobra.Command{
		Use:    "gendocs",
		Short:  "Write man pages and shell completions (used by packaging)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if manDir == "" && complDir == "" {
				return usageErr("gendocs: give --man DIR, --completions DIR or both")
			}
			root := cmd.Root()
			if manDir != "" {
				if err := genMan(root, manDir); err != nil {
					return runtimeErr(fmt.Errorf("gendocs: %v", err))
				}
			}
			if complDir != "" {
				if err := genCompletions(root, complDir); err != nil {
					return runtimeErr(fmt.Errorf("gendocs: %v", err))
				}
			}
			return nil
		},
	}
	c.Flags().StringVar(&manDir, "man", "", "directory to write announce.8 and one page per subcommand into")
	c.Flags().StringVar(&complDir, "completions", "", "directory to write bash (announce), zsh (_announce) and fish (announce.fish) completions into")
	return c
}

func genMan(root *cobra.Command, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// The packages install completion files, so cobra's generated
	// "completion" command would only add five pages of boilerplate.
	for _, sub := range root.Commands() {
		if sub.Name() == "completion" {
			sub.Hidden = true
		}
	}
	header := doc.GenManHeader{
		Section: manSection,
		Source:  "selfannounce " + root.Version,
		Manual:  "selfannounce manual",
	}
	return genManTree(root, header, dir)
}

func genManTree(cmd *cobra.Command, header doc.GenManHeader, dir string) error {
	for _, sub := range cmd.Commands() {
		if !sub.IsAvailableCommand() || sub.IsAdditionalHelpTopicCommand() {
			continue
		}
		if err := genManTree(sub, header, dir); err != nil {
			return err
		}
	}
	// The date comes from SOURCE_DATE_EPOCH when set; a "generated on" tag
	// would make every rebuild differ.
	cmd.DisableAutoGenTag = true
	var b bytes.Buffer
	h := header
	if err := doc.GenMan(cmd, &h, &b); err != nil {
		return err
	}
	sections, seeAlso := manExtra(cmd)
	page := b.String()
	// Operators expect SEE ALSO last, so the extra sections go before
	// cobra's and the extra references join its list.
	if i := strings.Index(page, ".SH SEE ALSO\n"); i >= 0 {
		page = page[:i] + sections + strings.TrimRight(page[i:], "\n") + ", " + seeAlso + "\n"
	} else {
		page += sections + ".SH SEE ALSO\n" + seeAlso + "\n"
	}
	name := strings.ReplaceAll(cmd.CommandPath(), " ", "-") + "." + manSection
	return os.WriteFile(filepath.Join(dir, name), []byte(page), 0o644)
}

// manExtra returns the sections an operator looks for in a daemon's page and
// that cobra's generator has no field for, and extra SEE ALSO references.
// Values come from the code's own constants so they cannot go stale.
func manExtra(cmd *cobra.Command) (sections, seeAlso string) {
	seeAlso = "\\fBselfannounce.service\\fR, /usr/share/doc/selfannounce/"
	var b strings.Builder
	switch {
	case !cmd.HasParent():
		b.WriteString(".SH EXIT STATUS\n")
		for _, e := range []struct {
			code int
			text string
		}{
			{ExitOK, "every selected port was announced"},
			{ExitRuntime, "could not announce: bad path, no privilege, send failed"},
			{ExitUsage, "malformed flag, argument or configuration"},
			{ExitUnknown, "no such domain, domid or VM UUID"},
			{ExitUnreachable, "xenstore or libvirt not reachable"},
			{ExitPartial, "some selected ports were not announced"},
		} {
			fmt.Fprintf(&b, ".TP\n\\fB%d\\fR\n%s\n", e.code, e.text)
		}
		fmt.Fprintf(&b, ".SH FILES\n.TP\n\\fI%s\\fR\nconfiguration shared by the one-shot command and the daemon; every key is listed, commented out, with its default\n", config.DefaultPath)
	case cmd.Name() == "daemon":
		b.WriteString(".SH SIGNALS\n.TP\n\\fBSIGHUP\\fR\nreload the configuration file (systemctl reload selfannounce)\n.TP\n\\fBSIGTERM\\fR, \\fBSIGINT\\fR\nfinish and exit\n")
		fmt.Fprintf(&b, ".SH FILES\n.TP\n\\fI%s\\fR\nconfiguration; the daemon runs on defaults when it is missing\n", config.DefaultPath)
		b.WriteString(".TP\n\\fIselfannounce.service\\fR\nsystemd unit running the daemon (Type=notify, with watchdog); see \\fBsystemctl cat selfannounce\\fR\n")
		fmt.Fprintf(&b, ".SH METRICS\nPrometheus metrics are served on http://%s/metrics unless \\fBmetrics.listen\\fR is set to the empty string.\n", config.DefaultMetricsListen)
		seeAlso += ", \\fBsystemd.service\\fR(5), \\fBsystemd-analyze\\fR(1)"
	}
	return b.String(), seeAlso
}

func genCompletions(root *cobra.Command, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	name := root.Name()
	for _, f := range []struct {
		file string
		gen  func(*bytes.Buffer) error
	}{
		{name, func(b *bytes.Buffer) error { return root.GenBashCompletionV2(b, true) }},
		{"_" + name, func(b *bytes.Buffer) error { return root.GenZshCompletion(b) }},
		{name + ".fish", func(b *bytes.Buffer) error { return root.GenFishCompletion(b, true) }},
	} {
		var b bytes.Buffer
		if err := f.gen(&b); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, f.file), b.Bytes(), 0o644); err != nil {
			return err
		}
	}
	return nil
}
