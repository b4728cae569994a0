package resolve

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/selfannounce/selfannounce/announce"
)

// DefaultLibvirtDir is where libvirtd keeps each running QEMU domain's live
// status XML.
const DefaultLibvirtDir = "/run/libvirt/qemu"

// LibvirtIface is one network interface of a libvirt domain.
type LibvirtIface struct {
	// Dev is the host-side netdev (target/@dev), e.g. vnet3. Its own MAC
	// is the guest's with the first byte set to 0xfe, never the guest's.
	Dev string
	MAC net.HardwareAddr
	IPs []netip.Addr
}

type libvirtDomain struct {
	name   string
	ifaces []LibvirtIface
}

type cachedFile struct {
	fi    fs.FileInfo
	mtime time.Time
	size  int64
	dom   libvirtDomain
	err   error
}

type libvirtResolver struct {
	dir string

	mu    sync.Mutex
	files map[string]*cachedFile
}

// Libvirt resolves ports from libvirt's live domain XML in dir (default
// DefaultLibvirtDir). Files are parsed again only when their mtime or size
// (or inode) changes: resolution sits on the announcement's hot path.
func Libvirt(dir string) Resolver {
	if dir == "" {
		dir = DefaultLibvirtDir
	}
	return &libvirtResolver{dir: dir, files: map[string]*cachedFile{}}
}

func (*libvirtResolver) Name() string { return "libvirt" }

func (l *libvirtResolver) Resolve(_ context.Context, port string) (announce.Guest, bool, error) {
	doms, errs, err := l.scan()
	if err != nil {
		return announce.Guest{}, false, err
	}
	for _, d := range doms {
		for _, ifc := range d.ifaces {
			if ifc.Dev == port {
				return announce.Guest{
					MAC:    append(net.HardwareAddr(nil), ifc.MAC...),
					IPs:    append([]netip.Addr(nil), ifc.IPs...),
					Source: "libvirt",
				}, true, nil
			}
		}
	}
	// A file we could not read may have held the port.
	return announce.Guest{}, false, errors.Join(errs...)
}

// scan brings the cache in line with dir and returns every parsed domain,
// plus the errors of files that failed. A missing dir means libvirt is not
// in use: nothing known, no error.
func (l *libvirtResolver) scan() ([]libvirtDomain, []error, error) {
	entries, err := os.ReadDir(l.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	seen := map[string]bool{}
	var doms []libvirtDomain
	var errs []error
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".xml") || e.IsDir() {
			continue
		}
		p := filepath.Join(l.dir, e.Name())
		fi, err := os.Stat(p)
		if err != nil {
			continue // removed since ReadDir
		}
		seen[p] = true
		cf := l.files[p]
		// libvirt replaces the file by rename, so a new inode also means
		// new content even within one mtime tick.
		if cf == nil || !os.SameFile(cf.fi, fi) || !cf.mtime.Equal(fi.ModTime()) || cf.size != fi.Size() {
			cf = &cachedFile{fi: fi, mtime: fi.ModTime(), size: fi.Size()}
			cf.dom, cf.err = parseLibvirtFile(p)
			l.files[p] = cf
		}
		if cf.err != nil {
			errs = append(errs, cf.err)
			continue
		}
		doms = append(doms, cf.dom)
	}
	for p := range l.files {
		if !seen[p] {
			delete(l.files, p)
		}
	}
	return doms, errs, nil
}

// LibvirtDomainInterfaces lists the interfaces of the running domain
// called name, for announcing a whole VM.
func LibvirtDomainInterfaces(dir, name string) ([]LibvirtIface, error) {
	if name == "" {
		return nil, fmt.Errorf("empty libvirt domain name")
	}
	l := Libvirt(dir).(*libvirtResolver)
	doms, errs, err := l.scan()
	if err != nil {
		return nil, err
	}
	for _, d := range doms {
		if d.name == name {
			return d.ifaces, nil
		}
	}
	err = fmt.Errorf("libvirt domain %q: %w", name, ErrUnknownDomain)
	if len(errs) > 0 {
		err = fmt.Errorf("%w (unreadable: %v)", err, errors.Join(errs...))
	}
	return nil, err
}

// XML shapes: libvirt's status file is <domstatus> wrapping the live
// <domain>; a plain <domain> (virsh dumpxml) is accepted too.
type xmlDomain struct {
	Name       string     `xml:"name"`
	Interfaces []xmlIface `xml:"devices>interface"`
}

type xmlIface struct {
	MAC struct {
		Address string `xml:"address,attr"`
	} `xml:"mac"`
	Target struct {
		Dev string `xml:"dev,attr"`
	} `xml:"target"`
	IPs []struct {
		Address string `xml:"address,attr"`
	} `xml:"ip"`
}

type xmlStatus struct {
	Domain *xmlDomain `xml:"domain"`
}

func parseLibvirtFile(p string) (libvirtDomain, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return libvirtDomain{}, err
	}
	d, err := parseLibvirtXML(b)
	if err != nil {
		return libvirtDomain{}, fmt.Errorf("%s: %v", p, err)
	}
	return d, nil
}

func parseLibvirtXML(b []byte) (libvirtDomain, error) {
	dec := xml.NewDecoder(bytes.NewReader(b))
	var root xml.StartElement
	for {
		tok, err := dec.Token()
		if err != nil {
			return libvirtDomain{}, fmt.Errorf("no root element: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			root = se
			break
		}
	}
	var xd xmlDomain
	switch root.Name.Local {
	case "domstatus":
		var st xmlStatus
		if err := dec.DecodeElement(&st, &root); err != nil {
			return libvirtDomain{}, err
		}
		if st.Domain == nil {
			return libvirtDomain{}, fmt.Errorf("<domstatus> without <domain>")
		}
		xd = *st.Domain
	case "domain":
		if err := dec.DecodeElement(&xd, &root); err != nil {
			return libvirtDomain{}, err
		}
	default:
		return libvirtDomain{}, fmt.Errorf("root element <%s> is neither <domstatus> nor <domain>", root.Name.Local)
	}
	d := libvirtDomain{name: strings.TrimSpace(xd.Name)}
	for _, xi := range xd.Interfaces {
		mac, err := announce.ParseMAC(strings.TrimSpace(xi.MAC.Address))
		if err != nil {
			continue // an interface we cannot announce for
		}
		ifc := LibvirtIface{Dev: strings.TrimSpace(xi.Target.Dev), MAC: mac}
		for _, ip := range xi.IPs {
			if a, ok := parseAddr(strings.TrimSpace(ip.Address)); ok {
				ifc.IPs = appendUnique(ifc.IPs, a)
			}
		}
		d.ifaces = append(d.ifaces, ifc)
	}
	return d, nil
}
