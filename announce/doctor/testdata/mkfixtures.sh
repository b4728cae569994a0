#!/bin/sh
# Builds the sysfs/procfs/etc fixture trees the doctor's tests read.
# Layouts follow what Linux 6.x shows: /sys/class/net/<if> is a symlink into
# /sys/devices, bridges have bridge/ and brif/<port> -> ../../<port>/brport,
# ports have brport/ and master/upper_<br> links, bonds have bonding/ and
# their members bonding_slave/ (drivers/net/bonding/bond_sysfs*.c).
# PCI paths use '_' instead of ':' because Go module zips reject ':' in
# file names; the reader never looks at the device path itself.
# Run from this directory: sh mkfixtures.sh
set -eu
cd "$(dirname "$0")"

T= # current tree

tree() {
	T=$1
	rm -rf "$T"
	mkdir -p "$T/sys/class/net" "$T/proc/net" "$T/etc"
	: >"$T/proc/net/route"
}

put() { mkdir -p "$(dirname "$1")"; printf '%s\n' "$2" >"$1"; }
attr() { put "$T/sys/class/net/$1/$2" "$3"; }
lnk() { mkdir -p "$(dirname "$2")"; ln -sr "$1" "$2"; }

# dev NAME DEVPATH [DEVTYPE]: a net device with the attributes every one has.
dev() {
	name=$1 path=$2 devtype=${3:-}
	d=$T/sys/$path
	mkdir -p "$d/statistics" "$d/queues"
	ifindex=$(($(ls "$T/sys/class/net" | wc -l) + 2))
	put "$d/mtu" 1500
	put "$d/operstate" up
	put "$d/carrier" 1
	put "$d/type" 1
	put "$d/addr_len" 6
	put "$d/address" "$(printf '52:54:00:00:%02x:%02x' $((ifindex / 256)) $((ifindex % 256)))"
	put "$d/broadcast" ff:ff:ff:ff:ff:ff
	put "$d/ifindex" "$ifindex"
	put "$d/iflink" "$ifindex"
	put "$d/flags" 0x1003
	put "$d/tx_queue_len" 1000
	if [ -n "$devtype" ]; then
		printf 'DEVTYPE=%s\nINTERFACE=%s\nIFINDEX=%s\n' "$devtype" "$name" "$ifindex" >"$d/uevent"
	else
		printf 'INTERFACE=%s\nIFINDEX=%s\n' "$name" "$ifindex" >"$d/uevent"
	fi
	lnk "$T/sys/class/net" "$d/subsystem"
	lnk "$d" "$T/sys/class/net/$name"
}

nic() { dev "$1" "devices/pci0000_00/0000_00_0${2:-3}.0/net/$1"; }
veth() { dev "$1" "devices/virtual/net/$1"; }
vif() { dev "$1" "devices/vif-$2/net/$1"; } # Xen netback: devices/vif-<domid>-<devid>
tap() {
	dev "$1" "devices/virtual/net/$1"
	attr "$1" tun_flags 0x1002
	attr "$1" owner -1
	attr "$1" group -1
}

# link UPPER LOWER MASTER?: the upper_/lower_ pair the kernel keeps for stacked devices.
stack() {
	lnk "$T/sys/class/net/$1" "$T/sys/class/net/$2/upper_$1"
	lnk "$T/sys/class/net/$2" "$T/sys/class/net/$1/lower_$2"
	lnk "$T/sys/class/net/$1" "$T/sys/class/net/$2/master"
}

bridge() {
	dev "$1" "devices/virtual/net/$1" bridge
	b=$T/sys/class/net/$1/bridge
	mkdir -p "$T/sys/class/net/$1/brif"
	for kv in ageing_time=30000 bridge_id=8000.525400000002 forward_delay=1500 gc_timer=0 \
		group_addr=01:80:c2:00:00:00 group_fwd_mask=0x0 hash_elasticity=16 hash_max=4096 \
		hello_time=200 hello_timer=0 max_age=2000 multicast_igmp_version=2 \
		multicast_last_member_count=2 multicast_last_member_interval=100 \
		multicast_membership_interval=26000 multicast_mld_version=1 multicast_querier=0 \
		multicast_querier_interval=25500 multicast_query_interval=12500 \
		multicast_query_response_interval=1000 multicast_query_use_ifaddr=0 multicast_router=1 \
		multicast_snooping=1 multicast_startup_query_count=2 multicast_startup_query_interval=3124 \
		multicast_stats_enabled=0 nf_call_arptables=0 nf_call_ip6tables=0 nf_call_iptables=0 \
		no_linklocal_learn=0 priority=32768 root_id=8000.525400000002 root_path_cost=0 root_port=0 \
		stp_state=0 tcn_timer=0 topology_change=0 topology_change_detected=0 topology_change_timer=0; do
		put "$b/${kv%%=*}" "${kv#*=}"
	done
	: >"$T/sys/class/net/$1/brforward"
}

# port BRIDGE PORT: enslave an existing device to a bridge.
port() {
	p=$T/sys/class/net/$2/brport
	mkdir -p "$p"
	for kv in backup_port= bpdu_guard=0 broadcast_flood=1 change_ack=0 config_pending=0 \
		designated_bridge=8000.525400000002 designated_cost=0 designated_port=32769 \
		designated_root=8000.525400000002 forward_delay_timer=0 group_fwd_mask=0x0 hairpin_mode=0 \
		hold_timer=0 isolated=0 learning=1 message_age_timer=0 multicast_fast_leave=0 \
		multicast_flood=1 multicast_router=1 multicast_to_unicast=0 neigh_suppress=0 path_cost=2 \
		port_id=0x8001 port_no=0x1 priority=32 proxyarp=0 proxyarp_wifi=0 root_block=0 state=3 \
		unicast_flood=1; do
		put "$p/${kv%%=*}" "${kv#*=}"
	done
	lnk "$T/sys/class/net/$1" "$p/bridge"
	lnk "$p" "$T/sys/class/net/$1/brif/$2"
	stack "$1" "$2"
}

# bond NAME "MODE N" MEMBER...: members must exist.
bond() {
	name=$1 mode=$2
	shift 2
	dev "$name" "devices/virtual/net/$name" bond
	b=$T/sys/class/net/$name/bonding
	mkdir -p "$b"
	case $mode in "802.3ad"*) ad=1 ;; *) ad= ;; esac
	for kv in "mode=$mode" "slaves=$*" active_slave= ad_select="stable 0" all_slaves_active=0 \
		arp_all_targets="any 0" arp_interval=0 arp_ip_target= arp_missed_max=2 arp_validate="none 0" \
		downdelay=0 fail_over_mac="none 0" lacp_active="on 1" lacp_rate="slow 0" lp_interval=1 \
		miimon=100 mii_status=up min_links=0 num_grat_arp=1 num_unsol_na=1 packets_per_slave=1 \
		peer_notif_delay=0 primary= primary_reselect="always 0" queue_id= resend_igmp=1 \
		tlb_dynamic_lb=1 updelay=0 use_carrier=1 xmit_hash_policy="layer2 0"; do
		put "$b/${kv%%=*}" "${kv#*=}"
	done
	for kv in ad_actor_key ad_actor_sys_prio ad_actor_system ad_aggregator ad_num_ports \
		ad_partner_key ad_partner_mac ad_user_port_key; do
		if [ -n "$ad" ]; then put "$b/$kv" 0; else : >"$b/$kv"; fi
	done
	m=$T/sys/class/net/bonding_masters
	if [ -s "$m" ]; then put "$m" "$(cat "$m") $name"; else put "$m" "$name"; fi
	case $mode in
	"balance-rr"*) pm="load balancing (round-robin)" ;;
	"active-backup"*) pm="fault-tolerance (active-backup)" ;;
	"balance-xor"*) pm="load balancing (xor)" ;;
	"broadcast"*) pm="fault-tolerance (broadcast)" ;;
	"802.3ad"*) pm="IEEE 802.3ad Dynamic link aggregation" ;;
	"balance-tlb"*) pm="transmit load balancing" ;;
	"balance-alb"*) pm="adaptive load balancing" ;;
	esac
	pf=$T/proc/net/bonding/$name
	mkdir -p "$T/proc/net/bonding"
	printf 'Ethernet Channel Bonding Driver: v6.1.0\n\nBonding Mode: %s\n' "$pm" >"$pf"
	[ "${mode%% *}" = active-backup ] && printf 'Primary Slave: None\nCurrently Active Slave: %s\n' "$1" >>"$pf"
	printf 'MII Status: up\nMII Polling Interval (ms): 100\nUp Delay (ms): 0\nDown Delay (ms): 0\nPeer Notification Delay (ms): 0\n' >>"$pf"
	if [ -n "$ad" ]; then
		printf '\n802.3ad info\nLACP active: on\nLACP rate: slow\nMin links: 0\nAggregator selection policy (ad_select): stable\n' >>"$pf"
	fi
	first=1
	for s in "$@"; do
		bs=$T/sys/class/net/$s/bonding_slave
		mkdir -p "$bs"
		state=active
		[ "${mode%% *}" = active-backup ] && [ -z "$first" ] && state=backup
		first=
		put "$bs/state" $state
		put "$bs/mii_status" up
		put "$bs/link_failure_count" 0
		put "$bs/perm_hwaddr" "$(cat "$T/sys/class/net/$s/address")"
		put "$bs/queue_id" 0
		if [ -n "$ad" ]; then
			put "$bs/ad_aggregator_id" 1
			put "$bs/ad_actor_oper_port_state" 61
			put "$bs/ad_partner_oper_port_state" 61
		fi
		stack "$name" "$s"
		printf '\nSlave Interface: %s\nMII Status: up\nSpeed: 10000 Mbps\nDuplex: full\nLink Failure Count: 0\nPermanent HW addr: %s\nSlave queue ID: 0\n' \
			"$s" "$(cat "$T/sys/class/net/$s/address")" >>"$pf"
	done
}

# vlan NAME LOWER ID
vlan() {
	dev "$1" "devices/virtual/net/$1" vlan
	lnk "$T/sys/class/net/$2" "$T/sys/class/net/$1/lower_$2"
	lnk "$T/sys/class/net/$1" "$T/sys/class/net/$2/upper_$1"
	mkdir -p "$T/proc/net/vlan"
	c=$T/proc/net/vlan/config
	[ -s "$c" ] || printf 'VLAN Dev name    | VLAN ID\nName-Type: VLAN_NAME_TYPE_RAW_PLUS_VID_NO_PAD\n' >"$c"
	printf '%-16s| %d  | %s\n' "$1" "$3" "$2" >>"$c"
}

# route IFACE: default route via IFACE plus its connected /24, as /proc/net/route prints them.
route() {
	r=$T/proc/net/route
	printf 'Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT                                                       \n' >"$r"
	printf '%s\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0                                                                               \n' "$1" >>"$r"
	printf '%s\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0                                                                               \n' "$1" >>"$r"
}

xeninv() {
	cat >"$T/etc/xensource-inventory" <<EOT
PRIMARY_DISK='/dev/disk/by-id/scsi-36000c29f0a1b2c3d4e5f60718293a4b5'
PRODUCT_BRAND='XenServer'
PRODUCT_VERSION='8.4.0'
BUILD_NUMBER='8.4.0'
INSTALLATION_UUID='6f1c8a52-2d1e-4c5b-9f7a-0e8d4b3c2a19'
CONTROL_DOMAIN_UUID='b3e1f7a4-5c6d-4e8f-9a0b-1c2d3e4f5a6b'
MANAGEMENT_INTERFACE='$1'
MANAGEMENT_ADDRESS_TYPE='IPv4'
CURRENT_INTERFACES='$1'
EOT
}

# healthy: a XenServer-like host (Linux bridge backend) with every trap avoided,
# and decoys each check must leave alone.
tree healthy
nic eth0 3
nic eth1 4
nic eth2 5
nic eth3 6
nic eth4 7
bridge xenbr0
port xenbr0 eth0
vif vif1.0 1-0
port xenbr0 vif1.0
tap tap1.0
port xenbr0 tap1.0
bond bond0 "active-backup 1" eth1 eth2
bridge xapi1
port xapi1 bond0
vif vif2.0 2-0
port xapi1 vif2.0
# jumbo storage bond in 802.3ad, not the management interface, no VMs
bond bond1 "802.3ad 4" eth3 eth4
for i in bond1 eth3 eth4; do attr $i mtu 9000; done
# STP bridge without VM ports: not the doctor's business
bridge stor0
attr stor0 bridge/stp_state 1
port stor0 bond1
route xenbr0
xeninv xenbr0

tree stp-forward-delay
nic eth0
bridge br0
attr br0 bridge/stp_state 1
port br0 eth0
tap vnet0
port br0 vnet0
attr vnet0 brport/state 1 # listening
route br0

tree bridge-on-unsafe-bond
nic eth0 3
nic eth1 4
nic eth2 5
nic eth3 6
nic eth4 7
nic eth5 8
bond bond0 "balance-rr 0" eth0 eth1
bridge xenbr0
port xenbr0 bond0
vif vif1.0 1-0
port xenbr0 vif1.0
bond bond1 "balance-alb 6" eth2 eth3
bridge xenbr1
port xenbr1 bond1
tap tap2.0
port xenbr1 tap2.0
bond bond2 "balance-xor 2" eth4 eth5
vlan bond2.100 bond2 100
bridge br100
port br100 bond2.100
tap vnet3
port br100 vnet3
route xenbr0

tree jumbo-management-bond
nic eth0 3
nic eth1 4
bond bond0 "active-backup 1" eth0 eth1
bridge xapi1
port xapi1 bond0
for i in eth0 eth1 bond0 xapi1; do attr $i mtu 9000; done
xeninv xapi1
route xapi1

tree jumbo-management-bond-route
nic eth0 3
nic eth1 4
bond bond0 "802.3ad 4" eth0 eth1
for i in eth0 eth1 bond0; do attr $i mtu 9000; done
route bond0

tree lacp-mismatch
nic eth1 4
veth m0
bond bond0 "active-backup 1" m0 eth1
nic eth2 5
nic eth3 6
bond bond1 "802.3ad 4" eth2 eth3
bridge xenbr0
port xenbr0 bond0
route xenbr0

tree vif-mtu-mismatch
nic eth0
bridge xenbr0
port xenbr0 eth0
vif vif3.0 3-0
port xenbr0 vif3.0
attr vif3.0 mtu 1400
tap tap3.0
port xenbr0 tap3.0
attr tap3.0 mtu 9000
vif vif4.0 4-0
port xenbr0 vif4.0
route xenbr0

tree fdb-ageing
nic eth0 3
nic eth1 4
nic eth2 5
bridge br0
attr br0 bridge/ageing_time 360000
port br0 eth0
tap vnet0
port br0 vnet0
bridge br1
attr br1 bridge/ageing_time 0
port br1 eth1
tap vnet1
port br1 vnet1
bridge br2
attr br2 bridge/ageing_time 1000
port br2 eth2
tap vnet2
port br2 vnet2
route br0

tree mld-snooping
nic eth0
bridge br0
attr br0 bridge/multicast_querier 1
port br0 eth0
tap vnet0
port br0 vnet0
route br0

tree vif-learning-off
nic eth0
bridge virbr1
port virbr1 eth0
tap vnet0
port virbr1 vnet0
attr vnet0 brport/learning 0
route virbr1
