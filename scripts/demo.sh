#!/bin/sh
# SPDX-License-Identifier: MIT
# Quick start, first command: install what is missing, build, start
# lazymemd, run the snapshot demo (a key-value store snapshotted under
# load, saved, restored lazily and rolled back), and end with what the
# daemon saw of it: lazymem free and lazymem ps, taken while the demo's
# runtime was still open.  Pass --quick for a shorter run, --hugetlb for
# the store on 2 MiB pages (as root, the pages are reserved for the run);
# --paging runs the demand-paging demo instead.  A lazymemd already running is used as it
# is; one started here is stopped at the end.
set -eu
cd "$(dirname "$0")/.."
build=$(./scripts/build.sh)
if [ "${1:-}" = --paging ]; then
	shift
	exec "$build/demos/lazymem-demo" "$@"
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
