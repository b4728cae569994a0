//go:build linux

package netwatch

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/selfannounce/selfannounce/internal/netlab"
	"github.com/selfannounce/selfannounce/internal/testenv"
)

// nlmsg frames payload as one netlink message.
func nlmsg(typ, flags uint16, seq, pid uint32, payload []byte) []byte {
	l := unix.NLMSG_HDRLEN + len(payload)
	b := make([]byte, (l+3)&^3)
	binary.NativeEndian.PutUint32(b[0:4], uint32(l))
	binary.NativeEndian.PutUint16(b[4:6], typ)
	binary.NativeEndian.PutUint16(b[6:8], flags)
	binary.NativeEndian.PutUint32(b[8:12], seq)
	binary.NativeEndian.PutUint32(b[12:16], pid)
	copy(b[unix.NLMSG_HDRLEN:], payload)
	return b
}

// A dump whose replies carry NLM_F_DUMP_INTR is not trusted, whichever
// message carries the flag: the kernel's table changed mid-dump and may
// have skipped a link, which diff would report as deleted.
func TestDumpInterruptedIsNotTrusted(t *testing.T) {
	const pid, seq = 4242, 7
	link := func(idx int32, name string) []byte {
		m := vifMsg()
		m.index, m.name = idx, name
		return m.bytes(t)
	}
	done := make([]byte, 4)
	for name, tc := range map[string]struct {
		datagrams   [][]byte
		trusted     bool
		interrupted bool
	}{
		"clean": {[][]byte{
			append(nlmsg(rtmNewLink, unix.NLM_F_MULTI, seq, pid, link(1, "a0")), nlmsg(rtmNewLink, unix.NLM_F_MULTI, seq, pid, link(3, "a2"))...),
			nlmsg(unix.NLMSG_DONE, unix.NLM_F_MULTI, seq, pid, done),
		}, true, false},
		"flag on a link message": {[][]byte{
			append(nlmsg(rtmNewLink, unix.NLM_F_MULTI, seq, pid, link(1, "a0")), nlmsg(rtmNewLink, unix.NLM_F_MULTI|nlmFDumpIntr, seq, pid, link(3, "a2"))...),
			nlmsg(unix.NLMSG_DONE, unix.NLM_F_MULTI, seq, pid, done),
		}, false, true},
		"flag on DONE": {[][]byte{
			nlmsg(rtmNewLink, unix.NLM_F_MULTI, seq, pid, link(1, "a0")),
			nlmsg(unix.NLMSG_DONE, unix.NLM_F_MULTI|nlmFDumpIntr, seq, pid, done),
		}, false, true},
		// Someone else's message with the flag says nothing of our dump.
		"flag on another socket's message": {[][]byte{
			append(nlmsg(rtmNewLink, unix.NLM_F_MULTI, seq, pid, link(1, "a0")), nlmsg(rtmNewLink, nlmFDumpIntr, 1, 0, link(9, "n9"))...),
			nlmsg(unix.NLMSG_DONE, unix.NLM_F_MULTI, seq, pid, done),
		}, true, false},
	} {
		w := &Watcher{pid: pid}
		d := dumpState{seq: seq, trusted: true}
		tb := table{}
		var finished bool
		for i, dg := range tc.datagrams {
			f, err := w.dumpDatagram(&d, tb, dg)
			if err != nil {
				t.Fatalf("%s: datagram %d: %v", name, i, err)
			}
			finished = f
		}
		if !finished {
			t.Fatalf("%s: dump never finished", name)
		}
		if d.trusted != tc.trusted || d.interrupted != tc.interrupted {
			t.Errorf("%s: trusted=%v interrupted=%v, want %v %v", name, d.trusted, d.interrupted, tc.trusted, tc.interrupted)
		}
	}
}

// TestResyncUnderChurn re-reads the whole state while other links are
// created and deleted as fast as ip can: every resync must still hold every
// link that existed throughout. On kernels before 6.7 a deletion mid-dump
// hid the next link from the dump, flagged NLM_F_DUMP_INTR; the resync
// redoes such dumps. Later kernels may never set the flag; the test then
// checks only the outcome.
func TestResyncUnderChurn(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "ip")
	ns := netlab.TestNS(t, "nwchurn")
	var batch strings.Builder
	for i := range 40 {
		fmt.Fprintf(&batch, "link add s%d type veth peer name t%d\n", i, i)
	}
	file := filepath.Join(t.TempDir(), "stable")
	if err := os.WriteFile(file, []byte(batch.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	ns.MustRun(t, "ip", "-batch", file)
	stable := kernelLinks(t, ns)

	var w *Watcher
	if err := ns.Do(func() (err error) { w, err = New(); return err }); err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	stop := make(chan struct{})
	churned := make(chan error, 1)
	go func() {
		var err error
		defer func() { churned <- err }()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			// Deleting links interleaved with the stable ones' indexes
			// is what made older kernels skip a link.
			if _, err = ns.Sh(fmt.Sprintf("ip link add c%d type veth peer name d%d && ip link del c%d", i, i, i)); err != nil {
				return
			}
		}
	}()
	for range 200 {
		tb, err := w.resync()
		if err != nil {
			close(stop)
			t.Fatal(err)
		}
		for idx, l := range stable {
			if _, ok := tb[idx]; !ok {
				close(stop)
				t.Fatalf("a resync lost %s (ifindex %d), which existed throughout", l.Name, idx)
			}
		}
	}
	close(stop)
	if err := <-churned; err != nil {
		t.Fatal(err)
	}
	t.Logf("dumps flagged interrupted and redone: %d", w.Interrupted())
}
