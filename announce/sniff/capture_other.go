//go:build !linux

package sniff

import (
	"context"
	"errors"
)

var errUnsupported = errors.New("sniff: capture needs Linux packet sockets")

// Sniffer holds capture sockets; capture exists only on Linux.
type Sniffer struct{}

// Run captures announcements; it exists only on Linux.
func Run(ctx context.Context, ifaces []string, fn func(Event)) error { return errUnsupported }

// Open opens capture sockets; it exists only on Linux.
func Open(ifaces []string) (*Sniffer, error) { return nil, errUnsupported }

// Serve reads announcements; it exists only on Linux.
func (s *Sniffer) Serve(ctx context.Context, fn func(Event)) error { return errUnsupported }

// Close closes nothing.
func (s *Sniffer) Close() error { return nil }
