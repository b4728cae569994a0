//go:build !linux

// Command selfannounce-bench measures the daemon in Linux network
// namespaces; elsewhere it only says so.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "selfannounce-bench: needs Linux")
	os.Exit(1)
}
