#!/bin/sh
# SPDX-License-Identifier: MIT
# lib/cluster.c against a real Redis Cluster (scripts/redis-cluster.sh:
# three masters, three replicas, each in a network namespace of its own):
# every page key's slot is the one the cluster computes, a key written to
# the master our routing names is accepted there, and another master's
# MOVED answer is read as naming that same master.
set -eu
keys=${builddir:-.}/tests/cluster-keys
. "${srcdir:-$(dirname "$0")/..}/tests/cluster-env.sh"
cli() {
	hub redis-cli "$@"
}
seed=${seed%:*}
NET_PREFIX=10.251.0.

# 1. Slots: ours against CLUSTER KEYSLOT, 256 pages of two namespaces.
{ "$keys" keys swap:1 0 128; "$keys" keys img:orders 1000000 128; } >"$dir/keys"
awk '{ print "CLUSTER KEYSLOT " $1 }' "$dir/keys" | cli -h $seed -p 7000 >"$dir/theirs"
awk '{ print $2 }' "$dir/keys" >"$dir/ours"
cmp "$dir/ours" "$dir/theirs" || { echo "FAIL: slots differ"; paste "$dir/ours" "$dir/theirs" | head; exit 1; }

# The masters and their slot ranges, from the cluster itself.
cli -h $seed -p 7000 cluster nodes | awk '$3 ~ /master/ && NF >= 9 { print $2, $9 }' >"$dir/masters"
[ "$(wc -l <"$dir/masters")" -eq 3 ] || { echo "FAIL: not three masters"; cat "$dir/masters"; exit 1; }
master_of() {
	awk -v s="$1" '{ split($2, r, "-"); if (s >= r[1] && s <= r[2]) { sub(/@.*/, "", $1); print $1 } }' \
		"$dir/masters"
}

# 2. Writes: at the master our slot names, accepted; at another, MOVED there.
n=0
while read -r key slot; do
	n=$((n + 1))
	[ $((n % 16)) -eq 1 ] || continue
	own=$(master_of "$slot")
	[ -n "$own" ] || { echo "FAIL: no master for slot $slot"; exit 1; }
	out=$(cli -h "${own%:*}" -p "${own#*:}" set "$key" "page $n")
	[ "$out" = OK ] || { echo "FAIL: $own refused $key: $out"; exit 1; }
	other=$(awk '{ sub(/@.*/, "", $1); print $1 }' "$dir/masters" | grep -v "^$own\$" | head -1)
	ans=$(cli -h "${other%:*}" -p "${other#*:}" get "$key" 2>&1 || true)
	parsed=$("$keys" redirect "$ans") || { echo "FAIL: not read as a redirection: $ans"; exit 1; }
	[ "$parsed" = "moved $slot ${own%:*} ${own#*:}" ] ||
		{ echo "FAIL: $ans read as $parsed, want moved $slot $own"; exit 1; }
done <"$dir/keys"
echo "cluster routing: 256 slots as the cluster computes them, $((n / 16)) writes routed, MOVED read"
# And the harness leaves nothing behind: no server, no namespace.
"$top/scripts/redis-cluster.sh" stop "$dir/c"
if pgrep -f "redis-server $NET_PREFIX" >/dev/null || ip netns list | grep -q '^lmrc-'; then
	echo "FAIL: redis-cluster.sh stop left servers or namespaces"
	exit 1
fi
