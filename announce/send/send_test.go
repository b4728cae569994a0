package send

import (
	"bytes"
	"testing"
)

func TestTagVLAN(t *testing.T) {
	frame := []byte{
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // dst
		0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // src
		0x80, 0x35, // RARP
		0x00, 0x01,
	}
	got, err := TagVLAN(frame, 10)
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0x52, 0x54, 0x00, 0x12, 0x34, 0x56,
		0x81, 0x00, 0x00, 0x0a, // 802.1Q, PCP 0, VID 10
		0x80, 0x35,
		0x00, 0x01,
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %x\nwant %x", got, want)
	}
	if frame[12] != 0x80 {
		t.Fatal("TagVLAN modified its input")
	}
	if got, err := TagVLAN(frame, 0); err != nil || !bytes.Equal(got, frame) {
		t.Fatalf("vlan 0: %x %v", got, err)
	}
	if got, err := TagVLAN(frame, 4094); err != nil || got[14] != 0x0f || got[15] != 0xfe {
		t.Fatalf("vlan 4094: %x %v", got, err)
	}
	for _, tc := range []struct {
		frame []byte
		vlan  uint16
		msg   string
	}{
		{frame, 4095, "VLAN 4095 is out of range 1-4094"},
		{frame[:10], 5, "frame of 10 bytes is shorter than an Ethernet header"},
	} {
		if _, err := TagVLAN(tc.frame, tc.vlan); err == nil || err.Error() != tc.msg {
			t.Errorf("TagVLAN(%d bytes, %d) = %v, want %q", len(tc.frame), tc.vlan, err, tc.msg)
		}
	}
}
