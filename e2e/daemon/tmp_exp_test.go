//go:build linux

package daemon_test

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestTmpProfile(t *testing.T) {
	bin := requireE2E(t)
	h := newHost(t)
	const n, first = 200, 100
	var cfg strings.Builder
	cfg.WriteString("guests:\n")
	var plug, arrive []string
	for i := first; i < first+n; i++ {
		vif, peer := fmt.Sprintf("vif%d.0", i), fmt.Sprintf("g%d", i)
		cfg.WriteString(guestYAML(vif, macN(i), ipN(i)))
		plug = append(plug, h.vifBatch(vif, peer)...)
		arrive = append(arrive, "link set "+peer+" up")
	}
	batch(t, h.ns, plug)
	d := startDaemon(t, bin, h.ns, writeConfig(t, cfg.String()))
	p := exec.Command("perf", "record", "-F", "2000", "-g", "-o", "/tmp/perf.data", "-p", fmt.Sprint(d.cmd.Process.Pid), "--", "sleep", "5")
	p.Start()
	time.Sleep(500 * time.Millisecond)
	batch(t, h.guests, arrive)
	p.Wait()
}
