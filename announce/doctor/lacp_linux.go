//go:build linux

package doctor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/mdlayher/packet"
)

// PacketListener captures LACPDUs with AF_PACKET sockets bound to the
// slow-protocols ethertype. A socket bound to a bond member still sees
// frames the bond takes over, because the kernel delivers by the original
// receiving device.
type PacketListener struct{}

// Listen opens every socket on the calling thread before reading, so a
// caller switched into a network namespace gets sockets in that namespace.
func (PacketListener) Listen(ctx context.Context, ifaces []string, d time.Duration) (map[string][]LACPDU, error) {
	var errs []error
	conns := map[string]*packet.Conn{}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for _, name := range ifaces {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		c, err := packet.Listen(ifi, packet.Raw, EtherTypeSlow, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("listen on %s: %w", name, err))
			continue
		}
		// A NIC filters multicast it was not asked for; a non-802.3ad bond
		// never asks for the slow-protocols address. Failure is not fatal:
		// a member in promiscuous mode (under a bridge) receives it anyway.
		_ = c.JoinGroup(SlowProtocolsMAC)
		conns[name] = c
	}
	deadline := time.Now().Add(d)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	var mu sync.Mutex
	out := map[string][]LACPDU{}
	var wg sync.WaitGroup
	for name, c := range conns {
		c.SetReadDeadline(deadline)
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1514)
			for {
				n, _, err := c.ReadFrom(buf)
				if err != nil {
					if !errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() == nil {
						mu.Lock()
						errs = append(errs, fmt.Errorf("read on %s: %w", name, err))
						mu.Unlock()
					}
					return
				}
				if pdu, ok := ParseLACPDU(buf[:n]); ok {
					mu.Lock()
					out[name] = append(out[name], pdu)
					mu.Unlock()
				}
			}
		}()
	}
	stop := context.AfterFunc(ctx, func() {
		for _, c := range conns {
			c.SetReadDeadline(time.Now())
		}
	})
	defer stop()
	wg.Wait()
	return out, errors.Join(errs...)
}
