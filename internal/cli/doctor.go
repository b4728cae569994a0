package cli

import (
	"fmt"
	"time"

	"github.com/selfannounce/selfannounce/announce/doctor"
	"github.com/spf13/cobra"
)

// NewDoctorCommand returns `announce doctor`, which checks the host for
// setups that swallow migration announcements. Its errors carry the exit
// status through ExitCode(): 0 clean, 1 warnings only, 2 errors or bad usage.
func NewDoctorCommand() *cobra.Command {
	var (
		asJSON       bool
		root         string
		metricsURL   string
		noListen     bool
		listenTime   time.Duration
		vmPorts      []string
		switchAgeing time.Duration
	)
	usage := func(err error) error { return &doctor.ExitError{Code: 2, Err: err} }
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check this host for setups that break VM migrations",
		Long: `Checks the host for the known traps that swallow migration announcements or
break a migrated VM's traffic, and says per finding what it breaks and how to
fix it. Check ids: ` + fmt.Sprint(doctor.Checks) + `.

Exit status: 0 when nothing is found, 1 for warnings only, 2 when an error is
found or the command is misused. See docs/troubleshooting.md.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usage(fmt.Errorf("doctor takes no arguments, got %q", args[0]))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Findings are not misuse: the usage text would bury the report.
			cmd.SilenceUsage = true
			if listenTime <= 0 || listenTime > time.Minute {
				return usage(fmt.Errorf("--listen-time %s: want more than 0 and at most 1m", listenTime))
			}
			if switchAgeing <= 0 {
				return usage(fmt.Errorf("--switch-ageing %s: want more than 0", switchAgeing))
			}
			o := doctor.Options{
				Root:         root,
				VMPortGlobs:  vmPorts,
				SwitchAgeing: switchAgeing,
				ListenTime:   listenTime,
			}
			// A --root tree is some other host's files: its daemon and its
			// wire are not reachable from here unless asked for explicitly.
			switch {
			case cmd.Flags().Changed("metrics"):
				o.MetricsURL = metricsURL
			case root == "":
				o.MetricsURL = doctor.DefaultMetricsURL
			}
			if !noListen && root == "" {
				o.Listener = doctor.PacketListener{}
			}
			out := doctor.Table
			if asJSON {
				out = doctor.JSON
			}
			return doctor.Execute(cmd.Context(), o, out, cmd.OutOrStdout())
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usage(err) })
	f := cmd.Flags()
	f.BoolVar(&asJSON, "json", false, "print the findings as JSON")
	f.StringVar(&root, "root", "", "read /sys, /proc and /etc under `DIR` instead of / (skips listening and the agent check)")
	f.StringVar(&metricsURL, "metrics", doctor.DefaultMetricsURL, "the daemon's metrics `URL`")
	f.BoolVar(&noListen, "no-listen", false, "skip listening for LACP frames on bond members")
	f.DurationVar(&listenTime, "listen-time", 3*time.Second, "how long to listen for LACP frames")
	f.StringSliceVar(&vmPorts, "vm-ports", doctor.DefaultVMPortGlobs, "name `patterns` of VM bridge ports")
	f.DurationVar(&switchAgeing, "switch-ageing", doctor.DefaultSwitchAgeing, "the upstream switches' MAC ageing time")
	return cmd
}
