//go:build linux

package linuxbr

import (
	"errors"
	"testing"

	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"
)

// A dump the kernel flags NLM_F_DUMP_INTR is redone, never used: the
// table changed while it was read, and an entry may be missing.
func TestDumpRedoesInterruptedDumps(t *testing.T) {
	for _, tc := range []struct {
		name        string
		interrupted int // first attempts flagged
		wantErr     bool
	}{
		{"clean", 0, false},
		{"interrupted once", 1, false},
		{"interrupted on every attempt", dumpTries, true},
	} {
		calls := 0
		c := nltest.Dial(func(req []netlink.Message) ([]netlink.Message, error) {
			calls++
			var flags netlink.HeaderFlags
			if calls <= tc.interrupted {
				flags = netlink.DumpInterrupted
			}
			msgs := []netlink.Message{
				{Header: netlink.Header{Type: unix.RTM_NEWNEIGH, Flags: flags}, Data: make([]byte, unix.SizeofNdMsg)},
				{Header: netlink.Header{Type: unix.RTM_NEWNEIGH}, Data: make([]byte, unix.SizeofNdMsg)},
				{}, // Multipart makes the last one NLMSG_DONE
			}
			for i := range msgs {
				msgs[i].Header.Sequence, msgs[i].Header.PID = req[0].Header.Sequence, req[0].Header.PID
			}
			return nltest.Multipart(msgs)
		})
		msgs, err := dump(c, netlink.Message{Header: netlink.Header{Type: unix.RTM_GETNEIGH, Flags: netlink.Request | netlink.Dump}})
		c.Close()
		if tc.wantErr {
			if !errors.Is(err, errDumpInterrupted) || msgs != nil {
				t.Errorf("%s: %d messages, err %v; want errDumpInterrupted", tc.name, len(msgs), err)
			}
			continue
		}
		if err != nil || len(msgs) != 2 || calls != tc.interrupted+1 {
			t.Errorf("%s: %d messages, err %v, %d attempts; want 2 messages after %d attempts", tc.name, len(msgs), err, calls, tc.interrupted+1)
		}
		for _, m := range msgs {
			if m.Header.Flags&netlink.DumpInterrupted != 0 {
				t.Errorf("%s: an interrupted dump's message was returned", tc.name)
			}
		}
	}
}
