package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/selfannounce/selfannounce/announce/sniff"
)

func newSniffCommand(g *globals) *cobra.Command {
	var ifaces []string
	var asJSON bool
	c := &cobra.Command{
		Use:   "sniff",
		Short: "Print every announcement seen: RARP (also QEMU's old 0x0835), gratuitous ARP, unsolicited NA",
		Long: `sniff prints one line per announcement that arrives or leaves on the given
interfaces (default: all): RARP, pre-2009 QEMU's 0x0835 frames, gratuitous ARP
requests and replies, and IPv6 unsolicited neighbour advertisements, tagged or
not. Each line has the time, interface, VLAN, kind, MAC and IP.

Filtering a capture on "arp" misses QEMU's announcements: they are RARP.`,
		Example: "  announce sniff --iface eth0 --iface vif3.0\n  announce sniff --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, i := range ifaces {
				if i == "" {
					return usageErr("empty --iface")
				}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			out := cmd.OutOrStdout()
			enc := json.NewEncoder(out)
			err := sniff.Run(ctx, ifaces, func(e sniff.Event) {
				if asJSON {
					_ = enc.Encode(e)
					return
				}
				fmt.Fprintln(out, e.String())
			})
			if err != nil && ctx.Err() == nil {
				return runtimeErr(err)
			}
			return nil
		},
	}
	c.Flags().StringArrayVar(&ifaces, "iface", nil, "interface to watch (repeatable; default all)")
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per line")
	return c
}
