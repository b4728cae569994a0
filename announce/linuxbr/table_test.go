package linuxbr

import (
	"errors"
	"reflect"
	"testing"
)

// tableOf turns a StaticHost into the TableHost the daemon would hold for
// the same links: masters by index, VLAN settings behind the callbacks.
func tableOf(s StaticHost) *TableHost {
	idx := map[string]int{}
	for _, l := range s {
		idx[l.Name] = l.Index
	}
	h := &TableHost{}
	for _, l := range s {
		h.Links = append(h.Links, TableLink{Link: l.Link, Kind: l.Kind, Master: idx[l.Master]})
	}
	h.Filtering = s.VLANFiltering
	h.VLANTables = func() (map[int][]VLAN, error) {
		t := map[int][]VLAN{}
		for _, l := range s {
			t[l.Index] = l.VLANs
		}
		return t, nil
	}
	return h
}

// A path resolved from a link table is the one resolved from the full view
// of the host, errors included.
func TestTableHostResolvesLikeStaticHost(t *testing.T) {
	for name, host := range map[string]StaticHost{"xen": xenHost(), "vlan": vlanHost()} {
		for _, port := range []string{"vif3.0", "tap4.0", "vif5.0", "vif6.0", "vif7.0", "eth1", "eth2", "vif9.0",
			"vnet0", "vnet1", "vnet2", "../x"} {
			want, werr := Resolve(host, port, nil)
			got, gerr := Resolve(tableOf(host), port, nil)
			if !reflect.DeepEqual(got, want) || (werr == nil) != (gerr == nil) || (werr != nil && werr.Error() != gerr.Error()) {
				t.Errorf("%s %s: table gives %+v, %v\nstatic gives %+v, %v", name, port, got, gerr, want, werr)
			}
		}
	}
}

// The bridge's VLAN settings are not in link messages: they are asked for
// only when the bridge filters, and the port table once per resolution.
func TestTableHostVLANSourcesOnlyWhenFiltering(t *testing.T) {
	h := tableOf(xenHost())
	h.VLANTables = func() (map[int][]VLAN, error) {
		return nil, errors.New("VLAN table read on a bridge that does not filter")
	}
	if _, err := Resolve(h, "vif3.0", nil); err != nil {
		t.Fatal(err)
	}

	h = tableOf(vlanHost())
	tables := h.VLANTables
	reads := 0
	h.VLANTables = func() (map[int][]VLAN, error) { reads++; return tables() }
	p, err := Resolve(h, "vnet0", nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.VLAN != 10 || len(p.Uplinks) != 3 || reads != 1 {
		t.Fatalf("path %+v after %d VLAN table reads, want VLAN 10, 3 uplinks, 1 read", p, reads)
	}
}

func TestTableHostUnknownMaster(t *testing.T) {
	h := &TableHost{Links: []TableLink{{Link: link("vif1.0", 5), Master: 3}}}
	_, err := Resolve(h, "vif1.0", nil)
	if !errors.Is(err, ErrNotFound) || err.Error() != `interface "vif1.0": its master, index 3, does not exist` {
		t.Fatalf("got %v", err)
	}
}
