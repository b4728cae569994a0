package config

import (
	"strings"
	"testing"
	"time"
)

const example = `
guests:
  - port: vif3.0            # name or glob
    mac: 52:54:00:12:34:56
    ips: [10.0.0.10, "fd00::10"]
schedule: {initial: 50ms, step: 100ms, max: 550ms, rounds: 5}
ports:
  - {match: "vif*-emu", trigger: guest-frame}
  - {match: "vif*",     trigger: carrier}
rate: 500
metrics: {listen: ""}
`

func TestParseExample(t *testing.T) {
	c, err := Parse([]byte(example))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Guests) != 1 || c.Guests[0].MAC.String() != "52:54:00:12:34:56" || len(c.Guests[0].IPs) != 2 {
		t.Fatalf("guests = %+v", c.Guests)
	}
	if c.Guests[0].IPs[1].String() != "fd00::10" {
		t.Fatalf("ips = %v", c.Guests[0].IPs)
	}
	if c.Schedule.Initial != 50*time.Millisecond || c.Schedule.Rounds != 5 {
		t.Fatalf("schedule = %+v", c.Schedule)
	}
	if tr, _ := c.TriggerFor("vif4.0-emu"); tr != TriggerGuestFrame {
		t.Fatalf("vif4.0-emu trigger = %q", tr)
	}
	if tr, _ := c.TriggerFor("vif4.0"); tr != TriggerCarrier {
		t.Fatalf("vif4.0 trigger = %q", tr)
	}
	if _, ok := c.TriggerFor("tap1.0"); ok {
		t.Fatal("tap1.0 matched although the rules replace the defaults")
	}
	if c.Rate != 500 || c.MetricsListen != "" {
		t.Fatalf("rate %d metrics %q", c.Rate, c.MetricsListen)
	}
}

func TestDefaults(t *testing.T) {
	c := Default()
	if c.Schedule.Initial != 50*time.Millisecond || c.Schedule.Max != 550*time.Millisecond {
		t.Fatal(c.Schedule)
	}
	for port, want := range map[string]Trigger{"vif3.0": TriggerCarrier, "vif3.0-emu": TriggerXenStart, "tap3.0": TriggerGuestFrame, "vnet0": TriggerGuestFrame} {
		if got, _ := c.TriggerFor(port); got != want {
			t.Errorf("%s: %q, want %q", port, got, want)
		}
	}
	if !c.IsVMPort("vnet7") || c.IsVMPort("eth0") {
		t.Error("vm-ports defaults wrong")
	}
	if c.MetricsListen != DefaultMetricsListen {
		t.Error(c.MetricsListen)
	}
}

func TestBadInput(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{"guests: [{port: vif1.0, mac: 52:54:00:zz:00:01}]", "malformed MAC"},
		{"guests: [{port: vif1.0, mac: 'fe:ff:ff:ff:ff:ff'}]", "Xen's vif MAC"},
		{"guests: [{port: vif1.0}]", "mac missing"},
		{"guests: [{port: vif1.0, mac: 52:54:00:00:00:01, ips: [10.0.0.300]}]", "malformed IP"},
		{"guests: [{port: vif1.0, mac: 52:54:00:00:00:01, ips: [224.0.0.1]}]", "not unicast"},
		{"schedule: {initial: 50}", "malformed duration"},
		{"schedule: {initial: fast}", "malformed duration"},
		{"schedule: {rounds: 0}", "rounds 0"},
		{"ports: [{match: 'vif*', trigger: sometimes}]", "unknown trigger"},
		{"ports: [{match: '[', trigger: carrier}]", "malformed pattern"},
		{"rate: 0", "rate 0"},
		{"colour: blue", "field colour not found"},
		{"ovs: {action: drop}", "ovs.action"},
		{"guests: {", "did not find"},
	} {
		_, err := Parse([]byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want error containing %q", tc.doc, err, tc.want)
			continue
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("Parse(%q): error spans lines: %q", tc.doc, err)
		}
	}
}

func TestLoadMissing(t *testing.T) {
	if _, err := Load(t.TempDir()+"/none.yaml", false); err != nil {
		t.Fatalf("missing default file: %v", err)
	}
	if _, err := Load(t.TempDir()+"/none.yaml", true); err == nil {
		t.Fatal("missing explicit file accepted")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(example))
	f.Add([]byte("schedule: {initial: 1ms, step: 0s, max: 1s, rounds: 3}"))
	f.Add([]byte("guests: [{port: '*', mac: 02:00:00:00:00:01, ips: ['::1']}]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		if c.Schedule.Validate() != nil || c.Rate < 1 {
			t.Fatalf("invalid config accepted: %+v", c)
		}
	})
}

// The first-frame MAC fallback is an explicit opt-in (#11 item 1).
func TestTrustGuestFrameMACOptIn(t *testing.T) {
	if Default().TrustGuestFrameMAC {
		t.Error("trust-guest-frame-mac on by default")
	}
	c, err := Parse([]byte("trust-guest-frame-mac: true\n"))
	if err != nil || !c.TrustGuestFrameMAC {
		t.Errorf("trust-guest-frame-mac: true gave %v, %v", c, err)
	}
}
