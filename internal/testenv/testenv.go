// Package testenv decides whether end-to-end tests can run here. They need
// root; without it they skip, unless SELFANNOUNCE_E2E=require (set by CI)
// turns the skip into a failure so a CI run can never pass by skipping.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// EnvRequire is the variable CI sets to make missing prerequisites fatal.
const EnvRequire = "SELFANNOUNCE_E2E"

func required() bool { return os.Getenv(EnvRequire) == "require" }

// Skip skips t with reason, or fails it when CI requires end-to-end tests.
func Skip(t testing.TB, reason string) {
	t.Helper()
	if required() {
		t.Fatalf("%s (and %s=require forbids skipping)", reason, EnvRequire)
	}
	t.Skip(reason)
}

// RequireRoot skips t unless it runs as root. In -short mode (the unit
// pass CI runs under the race detector) end-to-end tests always skip.
func RequireRoot(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		Skip(t, "end-to-end test needs root")
	}
}

// RequireCommands skips t unless every named program is on PATH.
func RequireCommands(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			Skip(t, "end-to-end test needs "+n+" on PATH")
		}
	}
}
