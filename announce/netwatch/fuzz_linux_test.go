//go:build linux

package netwatch

import (
	"encoding/binary"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzDatagram feeds whole rtnetlink datagrams, as Run and dump read them,
// through the message walk, the link decoder and the table. The seeds in
// testdata/fuzz/FuzzDatagram are datagrams recorded from this machine's
// kernel: link dumps of both families, and notifications while veths and a
// tap joined, left and were deleted from a bridge. Nothing may panic, and
// the table must own its bytes: the receive buffer is reused for the next
// datagram.
func FuzzDatagram(f *testing.F) {
	f.Add(append(fuzzMsg(rtmNewLink, vifMsg().bytes(f)), fuzzMsg(unix.NLMSG_DONE, make([]byte, 4))...))
	f.Fuzz(func(t *testing.T, b []byte) {
		tab := table{}
		var lm linkMsg
		err := eachMsg(b, func(h nlHeader, payload []byte) error {
			switch h.typ {
			case unix.NLMSG_DONE, unix.NLMSG_ERROR:
				nlErrno(payload)
			case rtmNewLink, rtmDelLink:
				if err := lm.decode(h.typ, payload); err != nil {
					return err
				}
				tab.apply(&lm)
			}
			return nil
		})
		_ = err
		before := tab.snapshot()
		for i := range b {
			b[i] = 0xa5
		}
		if after := tab.snapshot(); !reflect.DeepEqual(before, after) {
			t.Fatalf("table aliases the receive buffer:\n%v\n%v", before, after)
		}
		if evs := diff(tab, tab); len(evs) != 0 {
			t.Fatalf("diff of a table with itself: %v", evs)
		}
		if evs := diff(table{}, tab); len(evs) != len(tab) {
			t.Fatalf("diff from empty gave %d events for %d links", len(evs), len(tab))
		}
	})
}

// nlmsg frames payload as one netlink message, padded to NLMSG_ALIGNTO.
func fuzzMsg(typ uint16, payload []byte) []byte {
	l := unix.NLMSG_HDRLEN + len(payload)
	b := make([]byte, (l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1))
	binary.NativeEndian.PutUint32(b[0:4], uint32(l))
	binary.NativeEndian.PutUint16(b[4:6], typ)
	copy(b[unix.NLMSG_HDRLEN:], payload)
	return b
}
