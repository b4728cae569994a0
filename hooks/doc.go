// Package hooks holds the hypervisor hook scripts that selfannounce's
// packages install, and the tests that run them the way each hypervisor
// does. The scripts, by installed path:
//
//	xapi-vm-post-migrate -> /etc/xapi.d/vm-post-migrate/selfannounce
//	xen-vif-post.hook    -> /etc/xen/scripts/vif-post.d/selfannounce.hook
//	libvirt-qemu         -> /etc/libvirt/hooks/qemu.d/selfannounce
//
// docs/integrations.md says what each does and when.
package hooks
