#!/bin/sh
# SPDX-License-Identifier: MIT
# Runs check_remote against a Redis Cluster of three masters and three
# replicas, each in a network namespace of its own (scripts/redis-cluster.sh),
# from the hub namespace that joins them; stops the cluster after.
set -eu
top=${srcdir:-$(dirname "$0")/..}
prog=$(cd "${builddir:-.}/tests" && pwd)/check_remote
[ "$(id -u)" -eq 0 ] || { echo "SKIP: needs root (network namespaces)"; exit 77; }
command -v ip >/dev/null || { echo "SKIP: no ip (iproute2)"; exit 77; }
command -v redis-server >/dev/null || { echo "SKIP: no redis-server"; exit 77; }
dir=$(mktemp -d /tmp/lm-remote.XXXXXX)
cleanup() {
	"$top/scripts/redis-cluster.sh" stop "$dir/c" || true
	rm -rf "$dir"
}
trap cleanup EXIT INT TERM
seed=$("$top/scripts/redis-cluster.sh" start "$dir/c")
rc=0
ip netns exec lmrc-hub env LM_TEST_CLUSTER="$seed" LM_TEST_CLUSTER_DIR="$dir/c" "$prog" || rc=$?
exit $rc
