//go:build !linux

package linuxbr

import (
	"errors"
	"net"
	"time"
)

var errNotLinux = errors.New("Linux bridges exist only on Linux")

// NewHost returns a Host that reads sysfs under sysRoot; the VLAN table is
// unavailable off Linux.
func NewHost(sysRoot string) Host { return &SysfsHost{Root: sysRoot} }

type noFDB struct{}

func dialFDB() (fdbConn, error)            { return nil, errNotLinux }
func (*noFDB) Close() error                { return nil }
func (*noFDB) setDeadline(time.Time) error { return nil }
func (*noFDB) lookup(int, net.HardwareAddr, uint16) (fdbEntry, bool, error) {
	return fdbEntry{}, false, errNotLinux
}
func (*noFDB) move(int, net.HardwareAddr, uint16) error { return errNotLinux }
func (*noFDB) port(int) (string, int, bool, error)      { return "", 0, false, errNotLinux }
