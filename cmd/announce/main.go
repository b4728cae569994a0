// Command announce makes the physical network follow a VM that has just
// arrived on this host. See `announce --help` and docs/.
package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/selfannounce/selfannounce/internal/cli"
)

func main() {
	root := cli.NewRoot()
	err := root.Execute()
	if err != nil {
		// One line, always: hooks and syslog read it.
		msg := strings.Join(strings.Fields(err.Error()), " ")
		fmt.Fprintf(os.Stderr, "announce: %s\n", msg)
	}
	os.Exit(cli.ExitCode(err))
}
