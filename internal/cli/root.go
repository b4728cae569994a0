// Package cli is the announce command tree. It lives outside cmd/ so the
// man-page generator and tests can walk the same tree the binary runs.
package cli

import (
	"fmt"
	"os"
	"runtime/debug"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Version is set at build time with -ldflags "-X ...cli.Version=...".
var Version = ""

type globals struct {
	logFormat string
	logLevel  string
}

// NewRoot builds the whole command tree.
func NewRoot() *cobra.Command {
	g := &globals{}
	o := &oneShot{g: g}
	root := &cobra.Command{
		Use:   "announce",
		Short: "Make the physical network follow a VM that just arrived on this host",
		Long: `announce sends, on a VM's behalf, RARP (byte-identical to QEMU's announce-self),
gratuitous ARP and IPv6 unsolicited neighbour advertisements on QEMU's backoff
schedule, through the uplinks and VLAN the VM's own frames would take, after
repairing the host bridge's forwarding table.

Without a subcommand it announces once: one port (--vif), or every port of a
VM (--domid, --vm-uuid, --domain). "announce daemon" does it for every arrival.`,
		Example: `  announce --vif vif3.0
  announce --vif vnet0 --mac 52:54:00:12:34:56 --ip 10.0.0.10 --ip fd00::10
  announce --domid 7 --wait-ready=30s
  announce --vif vif3.0 --dry-run`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		Version:       version(),
		RunE:          o.run,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageErr("%v", err) })
	pf := root.PersistentFlags()
	pf.StringVar(&g.logFormat, "log-format", "console", "log format: console or json")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	o.flags(root)
	root.AddCommand(newSniffCommand(g), newDaemonCommand(g), NewDoctorCommand(), newVersionCommand(), NewGendocsCommand())
	return root
}

func version() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), version()) },
	}
}

func (g *globals) logger() (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(g.logLevel)
	if err != nil {
		return nil, usageErr("malformed --log-level %q", g.logLevel)
	}
	var enc zapcore.Encoder
	switch g.logFormat {
	case "console":
		ec := zap.NewDevelopmentEncoderConfig()
		ec.EncodeTime = zapcore.RFC3339NanoTimeEncoder
		enc = zapcore.NewConsoleEncoder(ec)
	case "json":
		ec := zap.NewProductionEncoderConfig()
		ec.EncodeTime = zapcore.RFC3339NanoTimeEncoder
		enc = zapcore.NewJSONEncoder(ec)
	default:
		return nil, usageErr("malformed --log-format %q (want console or json)", g.logFormat)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(os.Stderr), lvl)), nil
}
