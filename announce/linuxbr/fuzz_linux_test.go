//go:build linux

package linuxbr

import (
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzNetlink feeds one rtnetlink message payload to each decoder of the
// package: the AF_BRIDGE VLAN table, the link and the FDB entry. Seeds in
// testdata/fuzz/FuzzNetlink are payloads recorded from this machine's
// kernel (link dumps of both families, a bridge FDB dump) plus VLAN tables
// as br_fill_ifinfo builds them, which this kernel cannot produce (no
// vlan_filtering). Nothing may panic, and an accepted VLAN table holds only
// valid VLAN ids.
func FuzzNetlink(f *testing.F) {
	const pvidUntagged = bridgeVLANInfoPVID | bridgeVLANInfoUntagged
	f.Add(brlink(7, "bond0", unix.IFLA_AF_SPEC|unix.NLA_F_NESTED,
		vinfo(pvidUntagged, 1), vinfo(0, 10), vinfo(bridgeVLANInfoUntagged, 20),
		vinfo(bridgeVLANInfoRangeBegin, 100), vinfo(bridgeVLANInfoRangeEnd, 102)))
	f.Add(brlink(3, "up0", unix.IFLA_AF_SPEC, vinfo(bridgeVLANInfoRangeBegin, 4000)))
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, vlans, err := parseBridgeVLANs(b); err == nil {
			for _, v := range vlans {
				if v.ID == 0 || v.ID > 4094 {
					t.Fatalf("accepted VLAN id %d", v.ID)
				}
			}
		}
		parseLink(b)
		parseFDB(b)
	})
}
