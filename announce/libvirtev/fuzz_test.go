package libvirtev

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzInterfacesFromXML feeds domain XML, as libvirt's API returns it or as
// libvirtd keeps it under /run/libvirt/qemu, to InterfacesFromXML. Seeds:
// the resolver's status files and, in testdata/fuzz, live XML a real
// libvirtd wrote on this machine. Nothing may panic; errors are one line;
// every interface it returns names its device and has a 6-byte MAC.
func FuzzInterfacesFromXML(f *testing.F) {
	files, _ := filepath.Glob("../resolve/testdata/libvirt/*.xml")
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("<domain><devices><interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br0'/><target dev='vnet0'/></interface></devices></domain>"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ifs, err := InterfacesFromXML(b)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		for _, i := range ifs {
			if i.Dev == "" || len(i.MAC) != 6 {
				t.Fatalf("interface %+v", i)
			}
		}
	})
}
