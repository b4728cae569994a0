//go:build !linux

package send

import "errors"

// ErrNoRawCapability is returned when the process may not send raw frames.
var ErrNoRawCapability = errors.New("sending raw frames needs CAP_NET_RAW (run as root or grant the capability)")

var errNotLinux = errors.New("raw frame sending is implemented only on Linux")

type unsupported struct{}

// NewPacketSender returns a Sender that fails: packet sockets are Linux's.
func NewPacketSender() Sender { return unsupported{} }

// CheckRaw reports that raw sending is unavailable.
func CheckRaw() error { return errNotLinux }

func (unsupported) Send(int, []byte) error { return errNotLinux }
func (unsupported) Close() error           { return nil }
