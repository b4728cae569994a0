// Package libvirtev is selfannounce's window on libvirtd: it reports the
// moment a migrated domain really runs on this host (lifecycle event RESUMED
// with detail MIGRATED or POSTCOPY), and names a domain's taps and MACs
// through the libvirt RPC API. It speaks libvirt's wire protocol in pure Go
// (go-libvirt), so the agent needs neither cgo nor libvirt's client library.
package libvirtev

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"
)

// DefaultSocket is where a system libvirtd listens.
const DefaultSocket = "/var/run/libvirt/libvirt-sock"

// dialTimeout bounds how long a dead or wedged libvirtd can hold us.
const dialTimeout = 5 * time.Second

// endpoint is a local libvirtd socket and the driver URI to open on it.
type endpoint struct {
	socket string
	uri    libvirt.ConnectURI
}

// parseEndpoint accepts "" (the system QEMU driver), a socket path, or a
// local libvirt URI such as "qemu:///system", "qemu+unix:///system?socket=/p"
// or "test+unix:///default?socket=/p". Remote transports are refused: the
// agent only ever talks to the libvirtd of the host it runs on.
func parseEndpoint(s string) (endpoint, error) {
	switch {
	case s == "":
		return endpoint{socket: DefaultSocket, uri: libvirt.QEMUSystem}, nil
	case strings.HasPrefix(s, "/"):
		return endpoint{socket: s, uri: libvirt.QEMUSystem}, nil
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" {
		return endpoint{}, fmt.Errorf("malformed libvirt URI %q", s)
	}
	scheme := strings.SplitN(u.Scheme, "+", 2)
	if (len(scheme) == 2 && scheme[1] != "unix") || u.Host != "" {
		return endpoint{}, fmt.Errorf("libvirt URI %q is not local: only unix-socket URIs are supported", s)
	}
	ep := endpoint{socket: DefaultSocket, uri: libvirt.RemoteURI(u)}
	if p := u.Query().Get("socket"); p != "" {
		ep.socket = p
	}
	return ep, nil
}

func (ep endpoint) String() string { return ep.socket }

// dial connects and opens the driver; the caller disconnects.
func (ep endpoint) dial() (*libvirt.Libvirt, error) {
	l := libvirt.NewWithDialer(dialers.NewLocal(dialers.WithSocket(ep.socket), dialers.WithLocalTimeout(dialTimeout)))
	if err := l.ConnectToURI(ep.uri); err != nil {
		return nil, fmt.Errorf("libvirt not reachable at %s: %v", ep.socket, err)
	}
	return l, nil
}

func formatUUID(u libvirt.UUID) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}
