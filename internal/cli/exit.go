package cli

import (
	"errors"
	"fmt"
)

// Exit codes. Scripts and hooks branch on them, so they never change.
const (
	ExitOK          = 0
	ExitRuntime     = 1 // could not announce: bad path, no privilege, send failed
	ExitUsage       = 2 // malformed flag, argument or config
	ExitUnknown     = 3 // no such domain, domid or VM uuid
	ExitUnreachable = 4 // xenstore or libvirt not reachable
	ExitPartial     = 5 // some selected ports were not announced
)

// ExitError carries an exit code out of a command.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }
func (e *ExitError) ExitCode() int { return e.Code }

func usageErr(format string, a ...any) error {
	return &ExitError{Code: ExitUsage, Err: fmt.Errorf(format, a...)}
}

func runtimeErr(err error) error {
	var ee *ExitError
	if errors.As(err, &ee) {
		return err
	}
	return &ExitError{Code: ExitRuntime, Err: err}
}

func withCode(code int, err error) error { return &ExitError{Code: code, Err: err} }

// ExitCode maps an error from Execute to the process exit status.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var c interface{ ExitCode() int }
	if errors.As(err, &c) {
		return c.ExitCode()
	}
	return ExitRuntime
}
