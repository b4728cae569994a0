package libvirtev

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"net"
	"os"

	libvirt "github.com/digitalocean/go-libvirt"

	"github.com/selfannounce/selfannounce/announce"
)

// ErrUnknownDomain is returned (wrapped) for a domain libvirtd does not know.
var ErrUnknownDomain = errors.New("unknown libvirt domain")

// Iface is one of a running domain's NICs as the host sees it.
type Iface struct {
	Dev    string           // host-side tap, e.g. vnet3
	MAC    net.HardwareAddr // the guest's MAC (the tap's own differs)
	Bridge string           // source bridge, when libvirt records one
}

// DomainInterfaces asks the libvirtd listening on socket (a path, a local
// URI, or "" for the system daemon) for the taps of the running domain
// name. It must not be called from inside a libvirt hook: libvirtd holds
// the domain's lock while hooks run.
func DomainInterfaces(ctx context.Context, socket string, name string) ([]Iface, error) {
	ep, err := parseEndpoint(socket)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(ep.socket); err != nil {
		return nil, fmt.Errorf("libvirt not reachable at %s: %v", ep.socket, err)
	}
	type result struct {
		ifs []Iface
		err error
	}
	l, err := ep.dial()
	if err != nil {
		return nil, err
	}
	done := make(chan result, 1)
	go func() {
		ifs, err := domainInterfaces(l, name)
		done <- result{ifs, err}
	}()
	select {
	case r := <-done:
		l.Disconnect()
		return r.ifs, r.err
	case <-ctx.Done():
		// Closing the connection fails the pending call, which frees the
		// goroutine.
		l.Disconnect()
		<-done
		return nil, ctx.Err()
	}
}

func domainInterfaces(l *libvirt.Libvirt, name string) ([]Iface, error) {
	dom, err := l.DomainLookupByName(name)
	if err != nil {
		if libvirt.IsNotFound(err) {
			return nil, fmt.Errorf("%w %q", ErrUnknownDomain, name)
		}
		return nil, fmt.Errorf("libvirt domain %q: %v", name, err)
	}
	state, _, err := l.DomainGetState(dom, 0)
	if err != nil {
		return nil, fmt.Errorf("libvirt domain %q: state: %v", name, err)
	}
	if libvirt.DomainState(state) == libvirt.DomainShutoff {
		return nil, fmt.Errorf("libvirt domain %q is not running", name)
	}
	desc, err := l.DomainGetXMLDesc(dom, 0)
	if err != nil {
		return nil, fmt.Errorf("libvirt domain %q: XML: %v", name, err)
	}
	ifs, err := InterfacesFromXML([]byte(desc))
	if err != nil {
		return nil, fmt.Errorf("libvirt domain %q: %v", name, err)
	}
	return ifs, nil
}

type domainDoc struct {
	Devices struct {
		Interfaces []struct {
			MAC struct {
				Address string `xml:"address,attr"`
			} `xml:"mac"`
			Target struct {
				Dev string `xml:"dev,attr"`
			} `xml:"target"`
			Source struct {
				Bridge string `xml:"bridge,attr"`
			} `xml:"source"`
		} `xml:"interface"`
	} `xml:"devices"`
}

// InterfacesFromXML extracts the tap-backed NICs from a live domain XML,
// either as libvirt's API returns it (<domain>) or as libvirtd keeps it in
// /run/libvirt/qemu/<name>.xml (<domstatus><domain>). NICs without a host
// device (an inactive definition, hostdev passthrough) are skipped.
func InterfacesFromXML(b []byte) ([]Iface, error) {
	var root struct {
		XMLName xml.Name
		Domain  domainDoc `xml:"domain"`
		domainDoc
	}
	if err := xml.Unmarshal(b, &root); err != nil {
		return nil, fmt.Errorf("malformed domain XML: %v", err)
	}
	doc := root.domainDoc
	switch root.XMLName.Local {
	case "domain":
	case "domstatus":
		doc = root.Domain
	default:
		return nil, fmt.Errorf("malformed domain XML: root element <%s>, want <domain>", root.XMLName.Local)
	}
	var out []Iface
	for _, i := range doc.Devices.Interfaces {
		if i.Target.Dev == "" {
			continue
		}
		mac, err := announce.ParseMAC(i.MAC.Address)
		if err != nil {
			return nil, fmt.Errorf("interface %s: %v", i.Target.Dev, err)
		}
		out = append(out, Iface{Dev: i.Target.Dev, MAC: mac, Bridge: i.Source.Bridge})
	}
	return out, nil
}
