package cli

import (
	"context"
	"errors"

	"github.com/selfannounce/selfannounce/announce"
	"github.com/selfannounce/selfannounce/announce/config"
	"github.com/selfannounce/selfannounce/announce/plan"
)

var errNotOVS = errors.New("not an Open vSwitch port")

// planOVS plans a packet-out on an OVS port; wired in by the OVS support.
func planOVS(ctx context.Context, cfg *config.Config, port string, g announce.Guest) (*plan.Plan, error) {
	return nil, errNotOVS
}
