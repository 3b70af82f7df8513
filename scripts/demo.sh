#!/bin/sh
# SPDX-License-Identifier: MIT
# Quick start, first command: install what is missing, build, start
# lazymemd, run the snapshot demo (a key-value store snapshotted under
# load, saved, restored lazily and rolled back), and end with what the
# daemon saw of it: lazymem free and lazymem ps, taken while the demo's
# runtime was still open.  Pass --quick for a shorter run, --hugetlb for
# the store on 2 MiB pages (as root, the pages are reserved for the run);
# --paging runs the demand-paging demo instead; --migrate [MIB] the
# migration demo (a store saved on one simulated machine to a Redis
# Cluster, restored lazily on another).  A lazymemd already running is used as it
# is; one started here is stopped at the end.
set -eu
cd "$(dirname "$0")/.."
build=$(./scripts/build.sh)
if [ "${1:-}" = --paging ]; then
	shift
	exec "$build/demos/lazymem-demo" "$@"
fi
# --migrate: a store saved under load on machine A to a Redis Cluster of
# three masters and three replicas, restored lazily on machine B (each a
# network namespace: scripts/redis-cluster.sh), checksums compared.
if [ "${1:-}" = --migrate ]; then
	[ "$(id -u)" -eq 0 ] || { echo "demo: --migrate needs root (network namespaces)" >&2; exit 1; }
	dir=$(mktemp -d /tmp/lazymem-migrate.XXXXXX)
	trap './scripts/redis-cluster.sh stop "$dir/c"; rm -rf "$dir"' EXIT
	seed=$(./scripts/redis-cluster.sh start "$dir/c")
	url="redis://$seed/demo-store"
	demo=$build/demos/lazymem-migrate-demo
	ip netns exec lmrc-a env LAZYMEM_SOCKET=off "$demo" save "$url" "${2:-64}" | tee "$dir/a"
	ip netns exec lmrc-b env LAZYMEM_SOCKET=off "$demo" restore "$url" | tee "$dir/b"
	a=$(sed -n 's/^checksum //p' "$dir/a")
	b=$(sed -n 's/^checksum //p' "$dir/b")
	if [ -z "$a" ] || [ "$a" != "$b" ]; then
		echo "demo: checksums differ: machine A $a, machine B $b" >&2
		exit 1
	fi
	echo "demo: machine B restored what machine A saved: checksums equal ($a)"
	exit 0
fi
# The daemon, the demo's runtime and the command agree on the socket by the
# same rule (lazymemd(8)); a user without XDG_RUNTIME_DIR gets one in /tmp.
if [ "$(id -u)" -ne 0 ] && [ -z "${XDG_RUNTIME_DIR:-}" ] && [ -z "${LAZYMEM_SOCKET:-}" ]; then
	export LAZYMEM_SOCKET="/tmp/lazymem-$(id -u)/lazymemd.sock"
fi
lazymem=$build/daemon/lazymem
started=""
if ! "$lazymem" version >/dev/null 2>&1; then
	"$build/daemon/lazymemd"
	started=yes
	echo "demo: started lazymemd"
fi
# --hugetlb: the store and its fork() copy, 128 MiB each at most, in 2 MiB pages.
huge_nr=""
case " $* " in
*" --hugetlb "*)
	if [ "$(id -u)" -eq 0 ] && [ -w /proc/sys/vm/nr_hugepages ]; then
		huge_nr=$(cat /proc/sys/vm/nr_hugepages)
		echo $((huge_nr + 160)) >/proc/sys/vm/nr_hugepages
	fi
	;;
esac
stop() {
	if [ -n "$huge_nr" ]; then
		echo "$huge_nr" >/proc/sys/vm/nr_hugepages || true
	fi
	if [ -n "$started" ]; then
		# Its pid comes from the socket's peer: no pid file needed.
		pid=$("$lazymem" version 2>/dev/null | sed -n 's/^lazymemd .* pid \([0-9]*\).*/\1/p')
		[ -n "$pid" ] && kill "$pid" 2>/dev/null || true
	fi
}
trap stop EXIT
"$build/demos/lazymem-snapshot-demo" --then "'$lazymem' -h free && echo && '$lazymem' -h ps" "$@"
