// Package wiretest is what end-to-end tests see of the wire and of link
// state inside a network namespace: captures of the frames crossing an
// interface (kernel receive times, 802.1Q tags recovered from
// PACKET_AUXDATA, ingress and egress told apart), frame injection, carrier
// changes timed to the ioctl, and bridge-port STP states.
package wiretest
