package sniff

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"
)

// Event is an announcement seen on an interface.
type Event struct {
	Time      time.Time
	Interface string
	Announcement
}

// String gives one line: time, interface, VLAN ("-" if untagged), kind,
// announced MAC and IP ("-" for RARP).
func (e Event) String() string {
	var b strings.Builder
	b.WriteString(e.Time.Format(time.RFC3339Nano))
	b.WriteByte(' ')
	b.WriteString(e.Interface)
	b.WriteByte(' ')
	if e.VLAN == 0 {
		b.WriteByte('-')
	} else {
		b.WriteString(strconv.Itoa(int(e.VLAN)))
	}
	b.WriteByte(' ')
	b.WriteString(e.Kind.String())
	b.WriteByte(' ')
	b.WriteString(e.MAC.String())
	b.WriteByte(' ')
	if e.IP.IsValid() {
		b.WriteString(e.IP.String())
	} else {
		b.WriteByte('-')
	}
	return b.String()
}

type jsonEvent struct {
	Time      time.Time `json:"time"`
	Interface string    `json:"interface"`
	// VLAN is 0 for untagged frames, as in Announcement.
	VLAN   uint16  `json:"vlan"`
	Kind   string  `json:"kind"`
	MAC    string  `json:"mac"`
	IP     *string `json:"ip"` // null for RARP
	SrcMAC string  `json:"src_mac"`
}

// MarshalJSON gives an object with time, interface, vlan, kind, mac, ip
// (null for RARP) and src_mac, the Ethernet source, which differs from mac
// when a host announces on a guest's behalf.
func (e Event) MarshalJSON() ([]byte, error) {
	j := jsonEvent{
		Time:      e.Time,
		Interface: e.Interface,
		VLAN:      e.VLAN,
		Kind:      e.Kind.String(),
		MAC:       e.MAC.String(),
		SrcMAC:    e.SrcMAC.String(),
	}
	if e.IP.IsValid() {
		s := e.IP.String()
		j.IP = &s
	}
	return json.Marshal(j)
}
