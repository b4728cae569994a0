//go:build !linux

package doctor

import (
	"context"
	"errors"
	"time"
)

// PacketListener needs Linux packet sockets.
type PacketListener struct{}

func (PacketListener) Listen(context.Context, []string, time.Duration) (map[string][]LACPDU, error) {
	return nil, errors.New("listening for LACP needs Linux")
}
