#!/bin/sh
# SPDX-License-Identifier: MIT
# A Redis Cluster of simulated machines on this one: three masters and
# three replicas (Debian's redis-server), each in a network namespace of
# its own, joined by veth pairs to a bridge in a hub namespace, where the
# clients run (`ip netns exec lmrc-hub ...`).  No traffic leaves the
# namespaces this script creates.
#
# Two client machines join the same bridge, each a namespace of its own
# (lmrc-a, lmrc-b: the migration demo saves on one and restores on the
# other).
#
# usage: scripts/redis-cluster.sh start DIR   (prints the seed endpoint)
#        scripts/redis-cluster.sh stop DIR
#        scripts/redis-cluster.sh status
#        scripts/redis-cluster.sh relay DIR DELAY_US | relay DIR off
# relay: machine a's link goes through lmrc-relay (tests/lmrc-relay.c,
# $LMRC_RELAY), which delays every frame DELAY_US each way (a simulated
# longer link: this kernel has no netem); off puts it back on the bridge.
# Addresses: hub 10.251.0.1, node i (1-6) 10.251.0.1i, port 7000;
# machines a and b 10.251.0.21 and 10.251.0.22.
set -eu

NS=lmrc
NET=10.251.0
PORT=7000
NODES="1 2 3 4 5 6"
MACHINES="a b"

die() {
	echo "redis-cluster: $*" >&2
	exit 1
}

# Removes whatever a previous run left, in any state.  A server outlives
# its namespace's name, so every process in a namespace is killed first.
teardown() {
	dir=$1
	for ns in "$NS-hub" $(for i in $NODES; do echo "$NS-n$i"; done); do
		pids=$(ip netns pids "$ns" 2>/dev/null || true)
		# shellcheck disable=SC2086
		[ -z "$pids" ] || kill $pids 2>/dev/null || true
	done
	for i in $NODES; do
		if [ -n "$dir" ] && [ -f "$dir/n$i/redis.pid" ]; then
			kill "$(cat "$dir/n$i/redis.pid")" 2>/dev/null || true
		fi
	done
	# Killed servers leave their namespaces with them gone only once they exit.
	for i in $NODES; do
		if [ -n "$dir" ] && [ -f "$dir/n$i/redis.pid" ]; then
			p=$(cat "$dir/n$i/redis.pid")
			n=0
			while kill -0 "$p" 2>/dev/null && [ $n -lt 50 ]; do
				sleep 0.1
				n=$((n + 1))
			done
			kill -9 "$p" 2>/dev/null || true
			rm -f "$dir/n$i/redis.pid"
		fi
		pids=$(ip netns pids "$NS-n$i" 2>/dev/null || true)
		# shellcheck disable=SC2086
		[ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
		ip netns del "$NS-n$i" 2>/dev/null || true
	done
	for m in $MACHINES; do
		pids=$(ip netns pids "$NS-$m" 2>/dev/null || true)
		# shellcheck disable=SC2086
		[ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
		ip netns del "$NS-$m" 2>/dev/null || true
	done
	ip netns del "$NS-hub" 2>/dev/null || true
}

# Waits (30 s at most) until every node's answer to a command matches a pattern.
wait_all() {
	why=$1 cmd=$2 pattern=$3
	n=0
	for i in $NODES; do
		# shellcheck disable=SC2086
		until ip netns exec "$NS-hub" redis-cli -h "$NET.1$i" -p $PORT $cmd 2>/dev/null |
			grep -Eq "$pattern"; do
			n=$((n + 1))
			[ $n -lt 300 ] || die "node $i $why (see $dir/n$i/redis.log)"
			sleep 0.1
		done
	done
}

# A machine: namespace $NS-NAME, its eth0 at ADDR joined to the hub's
# bridge by a veth pair whose hub end is PEER.
machine() {
	ip netns add "$NS-$1"
	ip -n "$NS-$1" link set lo up
	ip -n "$NS-hub" link add "$2" type veth peer name eth0 netns "$NS-$1"
	ip -n "$NS-hub" link set "$2" master br0 up
	ip -n "$NS-$1" addr add "$3/24" dev eth0
	ip -n "$NS-$1" link set eth0 up
}

start() {
	dir=$1
	[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces)"
	command -v ip >/dev/null || die "no ip (iproute2): scripts/install-deps.sh installs it"
	command -v redis-server >/dev/null || die "no redis-server: scripts/install-deps.sh installs it"
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	teardown "$dir"
	ip netns add "$NS-hub"
	ip -n "$NS-hub" link set lo up
	ip -n "$NS-hub" link add br0 type bridge
	ip -n "$NS-hub" addr add "$NET.1/24" dev br0
	ip -n "$NS-hub" link set br0 up
	k=1
	for m in $MACHINES; do
		machine "$m" "host$m" "$NET.2$k"
		k=$((k + 1))
	done
	for i in $NODES; do
		machine "n$i" "v$i" "$NET.1$i"
		mkdir -p "$dir/n$i"
		rm -f "$dir/n$i/nodes.conf"
		ip netns exec "$NS-n$i" redis-server --bind "$NET.1$i" --port $PORT \
			--cluster-enabled yes --cluster-config-file "$dir/n$i/nodes.conf" \
			--cluster-node-timeout 2000 --dir "$dir/n$i" --save "" --appendonly no \
			--maxmemory-policy noeviction --protected-mode no \
			--daemonize yes --pidfile "$dir/n$i/redis.pid" --logfile "$dir/n$i/redis.log"
	done
	wait_all "did not answer" ping '^PONG'
	eps=""
	for i in $NODES; do
		eps="$eps $NET.1$i:$PORT"
	done
	# shellcheck disable=SC2086
	ip netns exec "$NS-hub" redis-cli --cluster create $eps --cluster-replicas 1 \
		--cluster-yes >"$dir/create.log" 2>&1 || die "cluster create failed (see $dir/create.log)"
	# Every node sees the cluster whole, and replicas are in sync: a write
	# that waits for one (WAIT) must find it.
	wait_all "never saw the cluster whole" "cluster info" '^cluster_state:ok'
	wait_all "has no replica in sync" "info replication" \
		'^(connected_slaves:[1-9]|master_link_status:up)'
	echo "$NET.11:$PORT"
}

# Machine a's veth end (hosta) leaves the bridge; the relay forwards
# between it and rla, whose peer rlb is on the bridge.
relay() {
	dir=$1 delay=$2
	if [ -f "$dir/relay.pid" ]; then
		kill "$(cat "$dir/relay.pid")" 2>/dev/null || true
		rm -f "$dir/relay.pid"
	fi
	ip -n "$NS-hub" link del rla 2>/dev/null || true
	if [ "$delay" = off ]; then
		ip -n "$NS-hub" link set hosta master br0
		return
	fi
	[ -x "${LMRC_RELAY:-}" ] || die "LMRC_RELAY must name the lmrc-relay program"
	ip -n "$NS-hub" link set hosta nomaster
	ip -n "$NS-hub" link add rla type veth peer name rlb
	ip -n "$NS-hub" link set rlb master br0 up
	ip -n "$NS-hub" link set rla up
	ip netns exec "$NS-hub" "$LMRC_RELAY" hosta rla "$delay" &
	echo $! >"$dir/relay.pid"
	# Up once a node answers through it.
	n=0
	until ip netns exec "$NS-a" redis-cli -h "$NET.11" -p $PORT ping 2>/dev/null | grep -q PONG; do
		n=$((n + 1))
		[ $n -lt 50 ] || die "no traffic through the relay"
		sleep 0.1
	done
}

case "${1:-}" in
start)
	[ $# -eq 2 ] || die "usage: $0 start DIR"
	start "$2"
	;;
stop)
	[ $# -eq 2 ] || die "usage: $0 stop DIR"
	teardown "$2"
	;;
relay)
	[ $# -eq 3 ] || die "usage: $0 relay DIR DELAY_US|off"
	relay "$2" "$3"
	;;
status)
	ip netns exec "$NS-hub" redis-cli -h "$NET.11" -p $PORT cluster info 2>/dev/null |
		grep -E '^cluster_(state|known_nodes|size):' || die "not running"
	;;
*)
	die "usage: $0 start DIR | stop DIR | status"
	;;
esac
