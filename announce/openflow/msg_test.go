package openflow

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// frame14 is the smallest acceptable frame: a bare Ethernet header.
var frame14 = []byte{
	0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	0x52, 0x54, 0x00, 0xaa, 0xbb, 0x05,
	0x80, 0x35,
}

func TestEncodeHello(t *testing.T) {
	// Version 1.3 header, length 16, then OFPHET_VERSIONBITMAP (1), length
	// 8, bitmap with bits 1 (1.0) and 4 (1.3) = 0x12.
	want := unhex(t, "04 00 0010 00000007  0001 0008 00000012")
	if got := encodeHello(7, supported); !bytes.Equal(got, want) {
		t.Fatalf("hello\n got %x\nwant %x", got, want)
	}
}

func TestEncodePacketOut(t *testing.T) {
	cases := []struct {
		name    string
		version uint8
		inPort  uint32
		action  Action
		want    string
	}{
		{
			// ofp_packet_out 1.0: buffer_id, in_port u16, actions_len u16;
			// ofp_action_output: type 0, len 8, port OFPP_NORMAL 0xfffa, max_len 0.
			"1.0 NORMAL", Version10, 3, Action{},
			"01 0d 0026 00000009  ffffffff 0003 0008  0000 0008 fffa 0000",
		},
		{
			// ofp_packet_out 1.3: buffer_id, in_port u32, actions_len u16, pad6;
			// ofp_action_output: type 0, len 16, port 0xfffffffa, max_len 0, pad6.
			"1.3 NORMAL", Version13, 3, Action{},
			"04 0d 0036 00000009  ffffffff 00000003 0010 000000000000" +
				"  0000 0010 fffffffa 0000 000000000000",
		},
		{
			// nx_action_resubmit: type 0xffff, len 16, vendor 0x2320,
			// subtype 14 (RESUBMIT_TABLE), in_port OFPP_IN_PORT 0xfff8,
			// table 1, pad3.
			"1.0 resubmit", Version10, 3, Action{Resubmit: true, Table: 1},
			"01 0d 002e 00000009  ffffffff 0003 0010" +
				"  ffff 0010 00002320 000e fff8 01 000000",
		},
		{
			"1.3 resubmit", Version13, 70000, Action{Resubmit: true, Table: 254},
			"04 0d 0036 00000009  ffffffff 00011170 0010 000000000000" +
				"  ffff 0010 00002320 000e fff8 fe 000000",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := encodePacketOut(c.version, 9, c.inPort, c.action, frame14)
			if err != nil {
				t.Fatal(err)
			}
			want := append(unhex(t, c.want), frame14...)
			if !bytes.Equal(got, want) {
				t.Fatalf("\n got %x\nwant %x", got, want)
			}
		})
	}
}

func TestEncodePacketOutRejects(t *testing.T) {
	cases := []struct {
		name    string
		version uint8
		inPort  uint32
		frame   []byte
		want    string
	}{
		{"no ofport", Version13, 0, frame14, "in_port 0"},
		{"1.0 reserved port", Version10, 0xff00, frame14, "OpenFlow 1.0"},
		{"1.3 reserved port", Version13, 0xfffffffa, frame14, "reserved"},
		{"runt", Version13, 1, frame14[:13], "shorter than an Ethernet header"},
		{"jumbo", Version13, 1, make([]byte, 65535), "does not fit"},
	}
	for _, c := range cases {
		_, err := encodePacketOut(c.version, 1, c.inPort, Action{}, c.frame)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want error containing %q", c.name, err, c.want)
		}
	}
}

func TestEncodeBarrierAndEcho(t *testing.T) {
	if got, want := encodeBarrier(Version10, 5), unhex(t, "01 12 0008 00000005"); !bytes.Equal(got, want) {
		t.Errorf("1.0 barrier %x, want %x", got, want)
	}
	if got, want := encodeBarrier(Version13, 5), unhex(t, "04 14 0008 00000005"); !bytes.Equal(got, want) {
		t.Errorf("1.3 barrier %x, want %x", got, want)
	}
	req := unhex(t, "04 02 000c 0000abcd  deadbeef")
	if got, want := encodeEchoReply(req), unhex(t, "04 03 000c 0000abcd  deadbeef"); !bytes.Equal(got, want) {
		t.Errorf("echo reply %x, want %x", got, want)
	}
}

func TestNegotiate(t *testing.T) {
	cases := []struct {
		name  string
		hello string
		want  uint8
		err   string
	}{
		// OVS 3.x's hello: version 1.5 (0x06), bitmap of 1.0..1.5 = 0x7e.
		{"ovs bitmap", "06 00 0010 00000001  0001 0008 0000007e", Version13, ""},
		{"bitmap 1.0 only", "04 00 0010 00000001  0001 0008 00000002", Version10, ""},
		{"bitmap without common", "05 00 0010 00000001  0001 0008 00000028", 0, "no common version"},
		{"plain 1.0", "01 00 0008 00000001", Version10, ""},
		{"plain 1.5", "06 00 0008 00000001", Version13, ""},
		{"plain 1.1", "02 00 0008 00000001", 0, "peer offers version 0x2"},
		// An unknown element before the bitmap is skipped, padding included.
		{"unknown element", "04 00 0018 00000001  0063 0005 ff 000000  0001 0008 00000010", Version13, ""},
		{"bad element", "04 00 000c 00000001  0001 0020", 0, "malformed"},
	}
	for _, c := range cases {
		got, err := negotiate(unhex(t, c.hello), supported)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: got %v, %v; want error %q", c.name, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%s: got %#x, %v; want %#x", c.name, got, err, c.want)
		}
	}
}

func TestParseError(t *testing.T) {
	// 1.3 BAD_REQUEST / BAD_PORT (code 11) echoing the start of a request.
	e, err := parseError(unhex(t, "04 01 0014 0000002a  0001 000b  04 0d 0036 0000002a"))
	if err != nil {
		t.Fatal(err)
	}
	if e.Xid != 42 || e.Type != 1 || e.Code != 11 || len(e.Data) != 8 {
		t.Fatalf("parsed %+v", e)
	}
	if want := "BAD_REQUEST code 11"; !strings.Contains(e.Error(), want) {
		t.Fatalf("%q lacks %q", e.Error(), want)
	}
	var target *Error
	if !errors.As(error(e), &target) {
		t.Fatal("errors.As failed")
	}
}

func TestMgmtSocket(t *testing.T) {
	if got := MgmtSocket("", "xenbr0"); got != "/var/run/openvswitch/xenbr0.mgmt" {
		t.Errorf("default rundir: %s", got)
	}
	if got := MgmtSocket("/tmp/x", "br-int"); got != "/tmp/x/br-int.mgmt" {
		t.Errorf("custom rundir: %s", got)
	}
}
