package guestframe

import (
	"testing"

	"golang.org/x/net/bpf"
)

// The VM in x/net/bpf cannot run the packet-type load, which the
// end-to-end tests cover; the source-MAC part after it stands alone.
func TestFilterSourceMAC(t *testing.T) {
	p := program()
	if _, err := bpf.Assemble(p); err != nil {
		t.Fatal(err)
	}
	vm, err := bpf.NewVM(p[2:])
	if err != nil {
		t.Fatal(err)
	}
	frame := func(src ...byte) []byte {
		f := make([]byte, 60)
		copy(f, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
		copy(f[6:], src)
		f[12], f[13] = 0x80, 0x35
		return f
	}
	for _, tc := range []struct {
		name  string
		frame []byte
		want  int
	}{
		{"unicast", frame(0x52, 0x54, 0, 0x12, 0x34, 0x56), snapLen},
		{"unicast, low bytes zero", frame(0x02, 0, 0, 0, 0, 0), snapLen},
		{"unicast, high bytes zero", frame(0, 0, 0, 0, 0, 1), snapLen},
		{"multicast", frame(0x01, 0, 0x5e, 0, 0, 1), 0},
		{"broadcast", frame(0xff, 0xff, 0xff, 0xff, 0xff, 0xff), 0},
		{"zero", frame(0, 0, 0, 0, 0, 0), 0},
		{"runt", []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54}, 0},
	} {
		got, err := vm.Run(tc.frame)
		if err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Errorf("%s: filter returned %d, want %d", tc.name, got, tc.want)
		}
	}
}
