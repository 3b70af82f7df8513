# SPDX-License-Identifier: MIT
# Sourced by the tests that need a Redis Cluster (cluster-routing.sh,
# remote.sh): skips without root, iproute2 or redis-server; starts three
# masters and three replicas, each in a network namespace of its own
# (scripts/redis-cluster.sh), in a directory of the test's own ($dir),
# stopped and removed on exit; $seed is a node's endpoint, hub() runs a
# command in the hub namespace that joins them.
top=${srcdir:-$(dirname "$0")/..}
[ "$(id -u)" -eq 0 ] || { echo "SKIP: needs root (network namespaces)"; exit 77; }
command -v ip >/dev/null || { echo "SKIP: no ip (iproute2)"; exit 77; }
command -v redis-server >/dev/null || { echo "SKIP: no redis-server"; exit 77; }
dir=$(mktemp -d /tmp/lm-cluster.XXXXXX)
cleanup() {
	"$top/scripts/redis-cluster.sh" stop "$dir/c" || true
	rm -rf "$dir"
}
trap cleanup EXIT INT TERM
seed=$("$top/scripts/redis-cluster.sh" start "$dir/c")
hub() {
	ip netns exec lmrc-hub "$@"
}
